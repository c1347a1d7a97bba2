"""Output paths are never taken from something else: a command replaces a file only
when it is that command's own kind of output (a features file, a CSV export, a
report it wrote), so ``-o`` pointing at a video, a notes file or the features file
itself is refused before any work, with one line naming it.

An output is also claimed before any work (:func:`claim_output`): its folder must take
files, and only one process may write it at a time (two array tasks given the same ``-o``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from socialfeat.errors import OutputBusyError, OutputExistsError, OutputNotWritableError

log = logging.getLogger(__name__)

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


def lock_path(output: str | Path) -> Path:
    """The lock file of ``output``: hidden, beside it (``.feats.h5.lock``)."""
    output = Path(output)
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def claim_output(output: str | Path, folders: tuple[Path, ...] = ()) -> Iterator[None]:
    """Hold ``output`` for the block: its folder (made if needed) and the existing ``folders`` (the
    journal) take files, and no other process writes it meanwhile. Checked before any work, so a
    bad path or a second run with the same ``-o`` fails with one line, not after hours.

    The claim is a POSIX record lock (``fcntl.lockf``) on :func:`lock_path`: cluster file systems
    (NFS, Lustre, GPFS) honour it across nodes, and the kernel drops it with the process however
    that ends (SIGKILL included), so a requeued job never finds a stale lock. The file stays."""
    output = Path(output)
    _check_folder(output.parent, make=True)
    for folder in folders:
        _check_folder(folder, make=False)
    key = lock_path(output).resolve()
    with _CLAIMED_LOCK:  # POSIX locks belong to the process: its threads are told apart here
        if key in _CLAIMED:
            raise OutputBusyError(f"{output}: another run in this process is writing it; give each run its own "
                                  "output")
        _CLAIMED.add(key)
    try:
        fd = _lock(output)
        try:
            yield
        finally:
            os.close(fd)  # (releases the lock)
    finally:
        with _CLAIMED_LOCK:
            _CLAIMED.discard(key)


_CLAIMED: set[Path] = set()  # outputs claimed by this process (two threads calling extract)
_CLAIMED_LOCK = threading.Lock()


def _check_folder(folder: Path, make: bool) -> None:
    """Write a file into ``folder`` (made first when ``make``; skipped when absent otherwise): a real
    write, since permissions alone do not tell (root, ACLs, a read-only mount)."""
    if not make and not folder.exists():
        return
    if folder.exists() and not folder.is_dir():
        raise OutputNotWritableError(f"cannot write into {folder}/: it is a file, not a folder")
    try:
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".socialfeat-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write into {folder}/: {e.strerror or e}") from None


def _lock(output: Path) -> int:
    """An open descriptor of the output's lock file, locked; OutputBusyError naming the holder when
    another process holds it. A file system without locks is told in a warning, not refused."""
    path = lock_path(output)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputNotWritableError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusyError(f"{output}: another run is writing it ({holder}); wait for it, or give "
                                  "each run its own -o (in a SLURM array: -o part-${SLURM_ARRAY_TASK_ID}.h5)"
                                  ) from None
        log.warning("%s: cannot lock (%s); two runs given the same output would overwrite each other",
                    path, e.strerror or e)
    me = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
    os.pwrite(fd, me, 0)  # (then cut what a longer earlier line left: never empty in between)
    os.ftruncate(fd, len(me))
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock, as it wrote it: the holder writes its line just after locking, so a run
    that finds the lock taken in between waits a moment for the line instead of saying 'unknown'."""
    for _ in range(50):
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.01)
    return "pid unknown"
