"""Output paths are never taken from something else: a command replaces a file only
when it is that command's own kind of output (a features file, a CSV export, a
report it wrote), so ``-o`` pointing at a video, a notes file or the features file
itself is refused before any work, with one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from socialfeat.errors import OutputExistsError

CSV_HEADER = ("video_id,path",)  # every table socialfeat writes as CSV starts with these columns
REPORT_MARKER = '<meta name="generator" content="socialfeat report">'


def refuse_foreign_output(path: str | Path, ours: Callable[[Path], bool], what: str) -> None:
    """Raise OutputExistsError when ``path`` exists and ``ours(path)`` says it is not ``what``."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name")
    if path.exists() and path.stat().st_size and not ours(path):  # (an empty file holds nothing to lose)
        raise OutputExistsError(f"{path} exists and is not {what}; not replacing it (remove it or choose "
                                "another output name)")


def _head(path: Path, n: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""


def is_socialfeat_csv(path: Path) -> bool:
    """A CSV table socialfeat exported (videos, clips, errors, or a flat features CSV)."""
    return _head(path, 256).lstrip("\ufeff").startswith(CSV_HEADER)


def is_socialfeat_report(path: Path) -> bool:
    """An HTML page that ``socialfeat report`` wrote (the marker, or the title older versions gave it)."""
    head = _head(path)
    return REPORT_MARKER in head or "<title>socialfeat report:" in head
