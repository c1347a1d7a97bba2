"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new
one, never a half-written file, whatever happens to the writing process. A process
killed while writing leaves its temporary (``.NAME.XXXXXXXX.tmp``) behind:
:func:`stale_temporaries` finds those for a later run to remove, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_TMP_SUFFIX = ".tmp"
_RANDOM_PART = r"[a-z0-9_]{8}"  # what tempfile.mkstemp puts between prefix and suffix


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path`` (after an fsync
    if asked), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def stale_temporaries(path: str | Path, before: float) -> list[Path]:
    """Temporaries that :func:`atomic_path` made for ``path`` and that were last modified
    before ``before`` (seconds since the epoch): left by a writer that was killed, since a
    live writer keeps touching its file. Nothing else matches."""
    path = Path(path)
    return _stale(path.parent, re.escape(f".{path.name}."), before)


def stale_temporaries_in(directory: str | Path, before: float, name_pattern: str = r".+") -> list[Path]:
    """Stale temporaries (as above) of any target in ``directory`` whose name matches
    ``name_pattern`` (a regular expression)."""
    return _stale(Path(directory), rf"\.(?:{name_pattern})\.", before)


def _stale(directory: Path, prefix: str, before: float) -> list[Path]:
    pattern = re.compile(prefix + _RANDOM_PART + re.escape(_TMP_SUFFIX))
    if not directory.is_dir():
        return []
    found = []
    for entry in os.scandir(directory):
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < before:
                    found.append(Path(entry.path))
    return sorted(found)
