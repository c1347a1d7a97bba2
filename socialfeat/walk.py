"""Finding the videos to process: directories walked recursively, single files,
and file lists, with include/exclude globs, in a stable order.

Every file keeps its own identity: its ``relpath`` (the ``path`` column of every
table) and the ``video_id`` hashed from it are unique within a run. One input root
gives paths relative to it, as before; several roots (``site1/ site2/``, files from
several folders) prefix each path with its root's folder name, as many trailing
components of it as tell the roots apart, so that ``site1/cam.mp4`` and
``site2/cam.mp4`` stay two videos. The same inputs give the same ids on every
rerun and in every shard.
"""

from __future__ import annotations

import collections
import csv
import fnmatch
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from socialfeat.errors import InputNotFoundError

# The containers labs record in: phones and cameras (mp4, mov, 3gp), camcorders (AVCHD .mts/.m2ts,
# MPEG-2 .mpg/.vob/.ts), broadcast and lab systems (.mxf, .dv), older Windows and web formats.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".3g2", ".mts", ".m2ts", ".ts", ".mxf", ".ogv", ".vob", ".dv", ".asf", ".f4v")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoRef:
    path: Path  # absolute path
    relpath: str  # path relative to the input root it came from (POSIX separators), unique within a run

    @property
    def video_id(self) -> str:
        """Stable across runs and machines: a hash of the relative path."""
        return hashlib.sha1(self.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _matches(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def read_file_list(path: str | Path) -> list[Path]:
    """One path per line (.txt), or a CSV whose 'path' (or 'video', or first) column holds paths.
    Relative entries are relative to the list's folder."""
    path = Path(path)
    base = path.parent
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            col = next((header.index(c) for c in ("path", "video") if c in header), 0)
            entries = [row[col] for row in reader if row and row[col].strip()]
    else:
        entries = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    return [p if p.is_absolute() else base / p for p in map(Path, entries)]


def root_labels(roots: list[Path]) -> dict[Path, str]:
    """For each root, the fewest trailing path components that no other root ends with
    (``/data/a/site`` and ``/data/b/site`` -> ``a/site`` and ``b/site``)."""
    labels = {}
    parts = {r: r.parts[1:] if r.is_absolute() else r.parts for r in roots}
    for root, mine in parts.items():
        others = [p for r, p in parts.items() if r != root]
        n = 1
        while n < len(mine) and any(p[-n:] == mine[-n:] for p in others):
            n += 1
        labels[root] = "/".join(mine[-n:]) or "_"
    return labels


def _unique_relpaths(found: dict[Path, tuple[Path, str]]) -> list[VideoRef]:
    """VideoRefs whose relpaths are unique: prefixed by their root's label when there are
    several roots; the absolute path (without its leading '/') if labels still collide."""
    roots = sorted({root for root, _ in found.values()})
    labels = root_labels(roots) if len(roots) > 1 else {roots[0]: ""} if roots else {}
    rel = {ap: f"{labels[root]}/{r}" if labels[root] else r for ap, (root, r) in found.items()}
    taken: dict[str, int] = {}
    for r in rel.values():
        taken[r] = taken.get(r, 0) + 1
    return [VideoRef(ap, r if taken[r] == 1 else ap.as_posix().lstrip("/")) for ap, r in rel.items()]


def _walk_dir(root: Path, include: tuple[str, ...], exclude: tuple[str, ...], extensions: tuple[str, ...],
              skipped: collections.Counter[str], unreadable: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    """Video files under ``root`` with their relative paths; other files are counted in ``skipped``
    by extension (hidden files aside), folders that cannot be listed go to ``unreadable`` (path,
    cause): their videos would otherwise be missing without a word.

    Linked folders are followed (sessions linked in from other storage are under the root as the
    user sees it), each folder once: a link back up, or a second link to the same folder, adds nothing.
    """
    found = []
    walked: set[tuple[int, int]] = set()  # (device, inode) of the folders listed so far

    def cannot_list(e: OSError) -> None:
        unreadable.append((str(e.filename or root), str(e.strerror or e)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            cannot_list(e)
            dirnames.clear()
            continue
        if (st.st_dev, st.st_ino) in walked:
            dirnames.clear()
            continue
        walked.add((st.st_dev, st.st_ino))
        dirnames.sort()
        for fn in sorted(filenames):
            if not fn.lower().endswith(extensions):
                if not fn.startswith("."):
                    skipped[Path(fn).suffix.lower() or "(none)"] += 1
                continue
            ap = Path(dirpath) / fn
            rel = ap.relative_to(root).as_posix()
            if include and not _matches(rel, include):
                continue
            if exclude and _matches(rel, exclude):
                continue
            found.append((ap, rel))
    return found


def find_videos(inputs: list[str | Path], file_list: str | Path | None = None,
                include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
                unreadable: list[tuple[str, str]] | None = None) -> list[VideoRef]:
    """Videos under the given directories/files, each once, sorted by relative path.

    Files named explicitly (arguments or list entries) are taken whatever their
    extension, so a bad file given on purpose is reported rather than ignored; their
    root is their own folder (or the list's folder for list entries under it). Folders
    that could not be listed are warned about and added to ``unreadable`` (path, cause).
    """
    found: dict[Path, tuple[Path, str]] = {}  # absolute path -> (root, path relative to it)
    if file_list is not None:
        list_root = Path(file_list).parent.resolve()
        for p in read_file_list(file_list):
            ap = p.resolve()
            try:
                found.setdefault(ap, (list_root, ap.relative_to(list_root).as_posix()))
            except ValueError:
                found.setdefault(ap, (ap.parent, ap.name))
    skipped: collections.Counter[str] = collections.Counter()  # extensions not taken from folders
    unreadable = [] if unreadable is None else unreadable  # folders that could not be listed
    for p in map(Path, inputs):
        if p.is_dir():
            root = p.resolve()
            for ap, rel in _walk_dir(root, include, exclude, extensions, skipped, unreadable):
                found.setdefault(ap, (root, rel))
        elif p.exists():
            ap = p.resolve()
            found.setdefault(ap, (ap.parent, ap.name))
        else:
            raise InputNotFoundError(f"{p}: no such file or directory")
    if unreadable:
        log.warning("%d folder(s) in the inputs could not be read, their videos are not included: %s",
                    len(unreadable), ", ".join(f"{path} ({cause})" for path, cause in unreadable))
    if skipped:
        log.warning("%d file(s) in the input folders skipped, not a video extension: %s (name such files "
                    "explicitly, or in --file-list, to read them anyway)", sum(skipped.values()),
                    ", ".join(f"{ext} ({n})" for ext, n in skipped.most_common()))
    return sorted(_unique_relpaths(found), key=lambda r: (r.relpath, str(r.path)))
