"""Shared fixtures: generated media, tiny checkpoints made by the tests, the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from media_factory import make_corpus  # noqa: E402

from socialfeat.models import create_model, save_checkpoint  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SOCIALFEAT = Path(sys.executable).parent / "socialfeat"


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """socialfeat's cache (digests of checkpoints, downloads) in the test session's own folder,
    for this process and the CLI processes it starts; tests that need another set their own."""
    previous = os.environ.get("SOCIALFEAT_HOME")
    os.environ["SOCIALFEAT_HOME"] = str(tmp_path_factory.mktemp("socialfeat-home"))
    yield
    if previous is None:
        os.environ.pop("SOCIALFEAT_HOME", None)
    else:
        os.environ["SOCIALFEAT_HOME"] = previous


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Real media files (good, odd, broken) in a nested folder tree."""
    root = tmp_path_factory.mktemp("media") / "videos"
    files = make_corpus(root)
    files["root"] = root
    return files


def _train_a_few_steps(model, steps: int = 3, seed: int = 0) -> None:
    """Make weights that are not a fresh init: a few Adam steps of the real MAE + contrastive loss."""
    torch.manual_seed(seed)
    kw = model.info.model_kwargs
    frames = kw.get("n_frame")
    video_shape = (2, 3, kw["img_size"], kw["img_size"]) + ((frames,) if frames else ())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        audio = torch.randn(2, kw["audio_length"], 128)
        video = torch.randn(video_shape)
        loss = model(audio, video)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny Social-MAE pretraining checkpoint, trained for a few steps, in socialfeat format."""
    model = create_model("social-mae-tiny")
    _train_a_few_steps(model)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_ft_ckpt(tmp_path_factory) -> Path:
    """A tiny Social-MAE finetuned-style checkpoint with a 3-class emotion head."""
    torch.manual_seed(1)
    model = create_model("social-mae-tiny", kind="finetune", label_names=["calm", "happy", "angry"],
                         task="classification", task_name="emotion")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny_ft.pt")


def run_cli(*args: str, check: bool = True, env: dict | None = None, timeout: float = 600, cwd=None):
    """Invoke the installed ``socialfeat`` console script as a subprocess."""
    proc = subprocess.run([str(SOCIALFEAT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    if check and proc.returncode not in (0, 3):
        raise AssertionError(f"socialfeat {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc
