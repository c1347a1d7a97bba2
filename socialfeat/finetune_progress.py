"""Full finetuning's progress on disk, so that a job killed at its time limit (or requeued) resumes.

Full finetuning trains a whole model once per held-out fold and once more on every clip; that can
take hours. After each epoch (and after each fold's scores) the state is written atomically to
``<output>.progress.pt``: which training it is in and how many of its epochs are done, the model's
and the optimizer's state, the random generators (the loader's shuffling, torch's own), the scores of
the folds done and the damaged clips met. Run the same command again: it goes on from there, and the
model and metrics are those of a run never interrupted. The state is tied to a fingerprint of
everything that changes the result (base weights, labelled clips and targets, settings); under other
settings it is not used (and is replaced, with a warning). The file goes once the model is written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from socialfeat.atomic import atomic_path, stale_temporaries

log = logging.getLogger(__name__)


def progress_path(output: str | Path) -> Path:
    return Path(str(output) + ".progress.pt")


class FinetuneProgress:
    """The saved state of one full finetuning run (``fingerprint``) beside its output."""

    def __init__(self, output: str | Path, fingerprint: str):
        self.path, self.fingerprint = progress_path(output), fingerprint

    def load(self) -> dict[str, Any] | None:
        """The state an earlier run of the same settings saved; None when there is none (or it was
        made under other settings, or cannot be read: the run starts from the beginning). A write
        that a kill cut off left a temporary as large as the model: it goes (the output's claim
        keeps any other run off this file)."""
        for stale in stale_temporaries(self.path, before=time.time()):
            stale.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # (a file cut short by a full disk: our writes are atomic, but say so)
            log.warning("%s cannot be read (%s: %s): finetuning starts from the beginning", self.path,
                        type(e).__name__, e)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was saved by a run with other labels, clips, weights or settings: finetuning starts "
                        "from the beginning (and replaces it)", self.path)
            return None
        done = state["stage"]
        log.warning("resuming full finetuning from %s: training %d, %d epoch(s) done", self.path, done + 1,
                 state["epoch"])
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (atomically: a kill during the write leaves the previous state)."""
        with atomic_path(self.path, fsync=True) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
