"""Self-supervised pretraining of CAV-MAE / Social-MAE on in-domain videos (``socialfeat pretrain``).

Layout (as facebookresearch/mae): ``config.py`` (the run's settings, from which the
command-line options are made), ``data.py`` (random clips per epoch, reusing socialfeat's
walking, decoding and preprocessing; damaged clips skipped), ``init.py`` (start weights,
2-D -> 3-D inflation), ``objective.py`` (the loss, with contrastive negatives gathered
across processes), ``schedule.py`` (step decay + warm-up), ``run_folder.py`` (what a run
writes, and never over an earlier run unasked), ``engine.py`` (the training loop as named
steps: checkpoints, resume, logs, validation) and ``distributed.py`` (torchrun / DDP helpers).
"""

from __future__ import annotations

from typing import Any

from pretraining.config import PretrainConfig

__all__ = ["PretrainConfig", "pretrain"]


def __getattr__(name: str) -> Any:
    """``pretrain`` is imported on first use: the config alone (what the CLI needs at
    start-up) does not pull in torch."""
    if name == "pretrain":
        from pretraining.engine import pretrain
        return pretrain
    raise AttributeError(f"module 'pretraining' has no attribute {name!r}")
