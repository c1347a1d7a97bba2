"""The run folder (``--out``): what a run writes there, and the rules that keep a
requeued or repeated command from destroying an earlier run's work.

- A folder holding a previous run's files is refused unless the caller resumes it
  or asks to overwrite it (then those files, and only those, are removed first).
- ``resume`` on a folder without a checkpoint simply starts, so a job script can
  always pass ``--resume``.
- Temporaries left by a checkpoint write that was killed (``.last.pt.*.tmp``, as
  large as the checkpoint) are removed when a run starts.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from socialfeat.atomic import atomic_path, stale_temporaries
from socialfeat.errors import OutputExistsError

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"
SKIPPED_LOG = "skipped.csv"
VIDEOS_LOG = "videos.csv"
RUN_FILES = (CHECKPOINT, TRAIN_LOG, VAL_LOG, SKIPPED_LOG, VIDEOS_LOG)


def previous_run_files(out: Path) -> list[str]:
    """Names of the files of an earlier run in ``out`` (nothing else counts)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one's files unless told what to do
    with them: a requeued job without ``--resume`` must not wipe days of training."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    found = previous_run_files(out)
    if found and not resume and not overwrite:
        raise OutputExistsError(f"{out} holds a previous run ({', '.join(found)}): "
                              f"use --resume to continue it or --overwrite to start again")


def clear_previous_run(out: Path) -> list[str]:
    """Remove an earlier run's files (``--overwrite``), so that none of them (say a
    ``val_log.csv`` the new run would not write) is mistaken for the new run's."""
    found = previous_run_files(out)
    for name in found:
        (out / name).unlink()
    if found:
        log.warning("%s: removed the previous run's %s (--overwrite)", out, ", ".join(found))
    return found


def remove_stale_temporaries(out: Path, started: float) -> list[Path]:
    """Delete temporaries of our own checkpoint writes that a killed run left behind:
    files named like ours and last modified before this run started (a live writer
    keeps touching its file), so nothing another program wrote is touched."""
    stale = stale_temporaries(out / CHECKPOINT, before=started)
    for path in stale:
        path.unlink(missing_ok=True)
        log.warning("removed %s, left by an interrupted checkpoint write", path)
    return stale


def write_videos_table(path: Path, videos: list[str], held_out: list[str], left_out: list[tuple[str, str]]) -> None:
    """Every video found and its part in the run (``train``, ``held_out``, or ``left_out`` with
    the reason), by relative path: which recordings shaped the weights and which were not used, in
    a file and not only on stderr. Written at each start (a resumed run may find other videos)."""
    held = set(held_out)
    rows = [{"path": p, "role": "held_out" if p in held else "train", "reason": ""} for p in videos]
    rows += [{"path": p, "role": "left_out", "reason": why} for p, why in left_out]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "role", "reason"])
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["path"]))


class CsvLog:
    """Append-only CSV that, on resume, first drops rows past the resumed step (rewritten
    atomically: a rewrite that fails, on a full disk say, leaves the run's log whole)."""

    def __init__(self, path: Path, columns: list[str], keep_until_step: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
