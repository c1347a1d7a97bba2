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


def test_a_registry_name_is_not_replaced_by_a_file_or_folder_of_that_name(tmp_path, monkeypatch):
    """`extract` (default --model social-mae) run in a folder that holds a folder or file named
    social-mae: the registry's weights are loaded, not that path (a folder gave 'no such checkpoint
    file', a file was silently used as the weights). A Path of that name is the file."""
    import hashlib

    import torch

    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    register_pretrained(dataclasses.replace(get_pretrained_cfg("social-mae"), name="lab-tiny", arch="social-mae-tiny",
                                            url=None, filename="lab-tiny.pth"))
    cache, work = tmp_path / "cache", tmp_path / "work"
    cache.mkdir()
    work.mkdir()
    monkeypatch.setenv("SOCIALFEAT_HOME", str(cache))
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    torch.save(create_model("social-mae-tiny").state_dict(), cache / "lab-tiny.pth")
    cached = hashlib.sha256((cache / "lab-tiny.pth").read_bytes()).hexdigest()
    (work / "lab-tiny").mkdir()
    assert load_model("lab-tiny").info.sha256 == cached
    (work / "lab-tiny").rmdir()
    save_checkpoint(create_model("social-mae-tiny"), work / "lab-tiny")
    assert load_model("lab-tiny").info.sha256 == cached
    assert load_model(work / "lab-tiny").info.sha256 != cached
