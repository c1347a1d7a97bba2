"""Atomic file writes: write to a temporary file beside the target, then rename.

A reader (or a resumed run) therefore sees either the old file or the complete new
one, never a half-written file, whatever happens to the writing process. The final
file gets the permissions the user's umask gives any new file (a temporary file is
private, and a rename would keep that: collaborators on a shared drive could not read it).
The data are flushed to disk (fsync) before the rename, so that a machine that loses
power right after it does not leave an empty file under the final name.

A process killed while writing leaves its temporary behind (``.NAME.XXXXXXXX.tmp``);
:func:`stale_temporaries` finds those of one target, for a later run to remove.
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


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces ``path`` (after an fsync,
    unless ``fsync=False``), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stale_temporaries(path: str | Path, before: float) -> list[Path]:
    """Temporaries that :func:`atomic_path` made for ``path`` and that were last modified
    before ``before`` (seconds since the epoch): left by a writer that was killed, since a
    live writer keeps touching its file. Nothing else matches."""
    path = Path(path)
    return _stale(path.parent, re.escape(_tmp_prefix(path)), before)


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
