"""The commands a researcher types first, with weights served by a local HTTP server: `extract` without
--model/--weights downloads Social-MAE (and the --tasks models) on first use and then runs; `models`
downloads ahead, shows the cache, and describes an entry. Entries are registered for the test only,
replacing the released ones inside the subprocess (tests/registered.py) or the test process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from media_factory import talking_video
from weights_server import WeightsServer, serialise

import socialfeat
from socialfeat.cli import main
from socialfeat.models import create_model, registry
from socialfeat.models.registry import CREMA_D_EMOTIONS, PretrainedCfg

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    with WeightsServer() as srv:
        srv.files["backbone.pth"] = serialise(create_model("social-mae-tiny").state_dict())
        srv.files["emotion.pth"] = serialise(create_model("social-mae-tiny", kind="finetune",
                                                           label_names=list(CREMA_D_EMOTIONS)).state_dict())
        yield srv


def _entries(srv: WeightsServer) -> str:
    """social-mae and social-mae-emotion as the released entries say, but tiny and served locally
    (the emotion model behind a Drive-style confirmation page)."""
    common = {"arch": "social-mae-tiny", "origin": "test server", "license": "none", "description": "tiny"}
    return json.dumps([
        {**common, "name": "social-mae", "kind": "pretrain", "url": f"{srv.url}/good/backbone.pth",
         "filename": "social-mae.pth"},
        {**common, "name": "social-mae-emotion", "kind": "finetune", "filename": "social-mae-ft-cremad.pth",
         "url": f"{srv.url}/drive/uc?id=emotion.pth&export=download", "task": "classification",
         "task_name": "emotion", "label_names": list(CREMA_D_EMOTIONS)}])


def run_registered(srv: WeightsServer, *args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TESTS / "registered.py"), _entries(srv), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def test_extract_downloads_social_mae_and_task_on_first_use(served, tmp_path):
    video = talking_video(tmp_path / "talk.mp4", seconds=4.0, size="160x120")
    env = {"SOCIALFEAT_HOME": str(tmp_path / "cache")}
    out = tmp_path / "feats.h5"
    proc = run_registered(served, "extract", video, "-o", out, "--tasks", "emotion", "--workers", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "social-mae: 100%" in proc.stderr and "social-mae-emotion: 100%" in proc.stderr  # progress bars
    df = socialfeat.load_features(out, embeddings="joint")
    assert len(df) == 2 and {f"emotion_{e}" for e in CREMA_D_EMOTIONS} <= set(df.columns)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [
        "social-mae-ft-cremad.pth", "social-mae-ft-cremad.pth.sha256.json",
        "social-mae.pth", "social-mae.pth.sha256.json"]
    hits = len(served.log)
    proc = run_registered(served, "extract", video, "-o", tmp_path / "again.h5", "--tasks", "emotion",
                          "--workers", "0", "--no-progress", env={**env, "SOCIALFEAT_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert len(served.log) == hits  # the cache serves the second run


@pytest.fixture
def registered(served, tmp_path, monkeypatch) -> Path:
    """The same entries registered in this process, for the in-process CLI runner (no torch start-up)."""
    for entry in json.loads(_entries(served)):
        entry["label_names"] = tuple(entry.get("label_names", ()))
        monkeypatch.setitem(registry._PRETRAINED, entry["name"], PretrainedCfg(**entry))
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SOCIALFEAT_OFFLINE", raising=False)
    return tmp_path / "cache"


def test_models_downloads_ahead_and_shows_the_cache(served, registered, monkeypatch):
    runner, hits = CliRunner(), len(served.log)
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    res = runner.invoke(main, ["models", "--download", "social-mae"])
    assert res.exit_code == 1 and str(registered / "social-mae.pth") in res.output
    assert "SOCIALFEAT_OFFLINE" in res.output and len(served.log) == hits
    monkeypatch.delenv("SOCIALFEAT_OFFLINE")
    res = runner.invoke(main, ["models", "--download", "social-mae", "--no-progress"])
    assert res.exit_code == 0, res.output
    sha = hashlib.sha256(served.files["backbone.pth"]).hexdigest()
    assert res.output.startswith("social-mae: cached (") and f"sha256 {sha}" in res.output
    listing = runner.invoke(main, ["models"]).output
    line = next(ln for ln in listing.splitlines() if ln.startswith("social-mae "))
    assert f"cached (4 MiB, sha256 {sha[:12]})" in line
    assert "not cached" in next(ln for ln in listing.splitlines() if ln.startswith("social-mae-emotion "))


def test_models_name_describes_task_labels_and_label_order():
    res = CliRunner().invoke(main, ["models", "social-mae-emotion"])
    assert res.exit_code == 0
    assert "emotion (classification)" in res.output and "anger, disgust, fear, happy, neutral, sad" in res.output
    assert "label order:" in res.output and "assumed alphabetical" in res.output
    assert "drive.usercontent.google.com/download?id=1WrqznBLZ0G8HRe6POt9E4w9zVNzbfWA_" in res.output


def test_an_offline_task_model_points_to_tasks_not_weights(tmp_path, monkeypatch):
    """A released task model given by hand goes to ``extract --tasks NAME=PATH``: ``--weights`` would make
    it the extraction model."""
    monkeypatch.setenv("SOCIALFEAT_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    res = CliRunner().invoke(main, ["models", "--download", "social-mae-laughter"])
    assert res.exit_code == 1 and "--tasks laughter=PATH" in res.output and "--weights" not in res.output, res.output
    res = CliRunner().invoke(main, ["models", "--download", "social-mae"])
    assert res.exit_code == 1 and "--weights PATH" in res.output, res.output
