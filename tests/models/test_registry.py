"""Named weights: registry contents, offline behaviour, atomic checksummed downloads (file:// URLs)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from socialfeat.models import WeightsUnavailableError, get_pretrained_cfg, list_pretrained
from socialfeat.models import registry
from socialfeat.models.hub import ChecksumError, fetch

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


def test_missing_weights_without_url_give_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as e:
        fetch("social-mae")
    msg = str(e.value)
    assert "social-mae.pth" in msg and "--weights PATH" in msg and "\n" not in msg


@pytest.fixture
def local_entry(tmp_path, monkeypatch):
    """A registry entry whose URL is a local file, so the real download code runs offline."""
    src = tmp_path / "served.pth"
    src.write_bytes(b"weights" * 1000)
    cfg = dataclasses.replace(get_pretrained_cfg("cav-mae-base"), name="local-test",
                              url=src.as_uri(), filename="local-test.pth")
    monkeypatch.setitem(registry._PRETRAINED, "local-test", cfg)
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path / "cache"))
    return src, cfg


def test_download_is_atomic_and_records_checksum(local_entry, tmp_path):
    src, _ = local_entry
    path = fetch("local-test", progress=False)
    assert path.read_bytes() == src.read_bytes()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == digest
    assert sorted(p.name for p in path.parent.iterdir()) == ["local-test.pth", "local-test.pth.sha256"]
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="does not match"):
        fetch("local-test")


def test_published_checksum_is_enforced(local_entry, monkeypatch):
    _, cfg = local_entry
    monkeypatch.setitem(registry._PRETRAINED, "local-test", dataclasses.replace(cfg, sha256="0" * 64))
    with pytest.raises(ChecksumError):
        fetch("local-test", progress=False)
    cache = fetch.__globals__["cache_dir"]()
    assert not (cache / "local-test.pth").exists()  # a bad download never lands under the final name
