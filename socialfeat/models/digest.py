"""SHA-256 of weights files, recorded beside them with the size and mtime they had; and of
settings (canonical JSON), for the fingerprints that tie saved work to what made it.

Hashing a 0.7 GB checkpoint takes seconds at every run. A record
``<file>.sha256.json`` keeps the digest with the file's size and mtime: while both
are unchanged the recorded digest stands; when either changed, the file is hashed
again (and the caller compares the new digest with the recorded one).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from socialfeat.atomic import atomic_path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_json(payload: Any) -> str:
    """``payload`` as JSON that is the same text for the same content (sorted keys)."""
    return json.dumps(payload, sort_keys=True, default=str)


def payload_digest(payload: Any) -> str:
    """The SHA-256 of ``payload``'s canonical JSON."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def record_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256.json")


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record of ``path`` ({'sha256', 'size', 'mtime_ns', ...}), or None if there is none or it is unreadable."""
    try:
        rec = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None


def is_fresh(path: str | Path, rec: dict[str, Any] | None) -> bool:
    """Whether ``rec`` still describes ``path`` (same size and mtime), so its digest can be trusted."""
    if rec is None:
        return False
    st = os.stat(path)
    return rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns


def write_record(path: str | Path, digest: str, stat_of: str | Path | None = None, **extra: Any) -> None:
    """Record ``digest`` for ``path`` with the size and mtime of ``stat_of`` (default ``path``; a
    file about to be renamed to ``path`` keeps both, so its record can be written first)."""
    st = os.stat(stat_of or path)
    rec = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **extra}
    with atomic_path(record_path(path)) as tmp:
        Path(tmp).write_text(json.dumps(rec, indent=1) + "\n")


def file_digest(path: str | Path, records: Path | None = None) -> str:
    """SHA-256 of ``path``: its fresh record's if it has one, else computed.

    ``records``: a folder (in socialfeat's cache) where digests of other files (a user's own
    checkpoints) are kept, keyed by their resolved path, with their size, inode and change
    time: a file replaced under the same name, even with its mtime preserved (``cp -p``), has
    a new change time and is hashed again. Best effort: an unwritable folder only costs a hash.
    """
    rec = read_record(path)
    if is_fresh(path, rec):
        return rec["sha256"]
    if records is None:
        return sha256_file(path)
    resolved = str(Path(path).resolve())
    kept = records / (hashlib.sha256(resolved.encode()).hexdigest()[:32] + ".json")
    st = os.stat(path)
    facts = {"path": resolved, "size": st.st_size, "inode": st.st_ino, "ctime_ns": st.st_ctime_ns,
             "mtime_ns": st.st_mtime_ns}
    try:
        known = json.loads(kept.read_text())
        if isinstance(known, dict) and {k: known.get(k) for k in facts} == facts:
            return str(known["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    try:
        records.mkdir(parents=True, exist_ok=True)
        with atomic_path(kept) as tmp:
            Path(tmp).write_text(json.dumps(dict(facts, sha256=digest), indent=1) + "\n")
    except OSError:
        pass
    return digest
