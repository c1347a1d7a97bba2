"""Named weights: registry contents, registration, offline behaviour (downloads: test_downloads.py)."""

from __future__ import annotations

import dataclasses

import pytest

from socialfeat.models import (
    WeightsUnavailableError,
    create_model,
    get_pretrained_cfg,
    list_pretrained,
    load_model,
    register_pretrained,
    registry,
    save_checkpoint,
)
from socialfeat.models.hub import fetch

EXPECTED = {"cav-mae-scale++", "cav-mae-scale+", "cav-mae-base", "social-mae", "social-mae-emotion",
            "social-mae-laughter", "social-mae-personality"}


def test_registry_lists_released_models():
    assert EXPECTED <= set(list_pretrained())
    emo = get_pretrained_cfg("social-mae-emotion")
    assert emo.kind == "finetune" and emo.task == "classification" and len(emo.label_names) == 6
    assert emo.model_kwargs()["label_dim"] == 6 and emo.model_kwargs()["n_frame"] == 8
    pers = get_pretrained_cfg("social-mae-personality")
    assert pers.task == "regression" and pers.label_names[0] == "openness"
    assert get_pretrained_cfg("cav-mae-scale++").preprocess.fbank_mean == -5.081
    with pytest.raises(registry.UnknownModelError, match="unknown model 'nope'"):
        get_pretrained_cfg("nope")


def test_released_social_mae_weights_point_at_the_authors_drive_files():
    drive_ids = {"social-mae": "1s2giy3_tQKL_cISiYcN5lBy_ami6Dc0n",
                 "social-mae-emotion": "1WrqznBLZ0G8HRe6POt9E4w9zVNzbfWA_",
                 "social-mae-personality": "1t8rvCVLvoLoQG85N7LToHZPF6vy9HQB2",
                 "social-mae-laughter": "1bjzz1oOF0vdvQ8fV3y5CU-Zxne1UeHpz"}
    for name, file_id in drive_ids.items():
        assert get_pretrained_cfg(name).url.startswith(f"https://drive.usercontent.google.com/download?id={file_id}&")
    assert all(get_pretrained_cfg(n).url for n in list_pretrained())  # every released entry downloads


def test_missing_weights_offline_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path))
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as e:
        fetch("social-mae")
    msg = str(e.value)
    assert str(tmp_path / "social-mae.pth") in msg and "--weights PATH" in msg and "\n" not in msg


def test_register_pretrained_refuses_a_silent_replacement(monkeypatch):
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    cfg = dataclasses.replace(get_pretrained_cfg("social-mae"), name="my-lab-model", url="https://example.org/m.pth")
    register_pretrained(cfg)
    assert get_pretrained_cfg("my-lab-model") == cfg
    with pytest.raises(ValueError, match="already registered"):
        register_pretrained(dataclasses.replace(cfg, url="https://example.org/other.pth"))
    with pytest.raises(registry.UnknownModelError, match="unknown architecture"):
        register_pretrained(dataclasses.replace(cfg, name="x", arch="nope"))


def test_a_local_checkpoint_is_hashed_once_and_again_when_replaced(tmp_path, monkeypatch):
    """Start-up does not rehash a checkpoint already seen; a file replaced under the same name
    (mtime preserved, as cp -p does) is hashed again."""
    import os

    from socialfeat.models import digest

    ckpt = save_checkpoint(create_model("social-mae-tiny"), tmp_path / "model.pt")
    hashed = []
    real = digest.sha256_file
    monkeypatch.setattr(digest, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    first = load_model(ckpt).info.sha256
    assert load_model(ckpt).info.sha256 == first and len(hashed) == 1
    st = ckpt.stat()
    other = save_checkpoint(create_model("social-mae-tiny"), tmp_path / "other.pt")
    os.replace(other, ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_model(ckpt).info.sha256 == real(ckpt) != first and len(hashed) == 2
