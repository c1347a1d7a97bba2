"""Finding the videos to process: directories walked recursively, single files,
and file lists, with include/exclude globs, in a stable order."""

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
    relpath: str  # path relative to the input root it came from (POSIX separators)

    @property
    def video_id(self) -> str:
        """Stable across runs and machines: a hash of the relative path."""
        return hashlib.sha1(self.relpath.encode("utf-8")).hexdigest()[:16]


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


def find_videos(inputs: list[str | Path], file_list: str | Path | None = None,
                include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoRef]:
    """Videos under the given directories/files, each once, sorted by relative path.

    Files named explicitly (arguments or list entries) are taken whatever their
    extension, so a bad file given on purpose is reported rather than ignored.
    """
    refs: dict[Path, VideoRef] = {}
    explicit = [Path(p) for p in inputs]
    if file_list is not None:
        listed = read_file_list(file_list)
        root = Path(file_list).parent.resolve()
        for p in listed:
            ap = p.resolve()
            try:
                rel = ap.relative_to(root).as_posix()
            except ValueError:
                rel = ap.name
            refs.setdefault(ap, VideoRef(ap, rel))
    skipped: collections.Counter[str] = collections.Counter()  # extensions not taken from folders
    for p in explicit:
        if p.is_dir():
            root = p.resolve()
            for dirpath, dirnames, filenames in os.walk(root):
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
                    refs.setdefault(ap, VideoRef(ap, rel))
        elif p.exists():
            ap = p.resolve()
            refs.setdefault(ap, VideoRef(ap, ap.name))
        else:
            raise InputNotFoundError(f"{p}: no such file or directory")
    if skipped:
        log.warning("%d file(s) in the input folders skipped, not a video extension: %s (name such files "
                    "explicitly, or in --file-list, to read them anyway)", sum(skipped.values()),
                    ", ".join(f"{ext} ({n})" for ext, n in skipped.most_common()))
    return sorted(refs.values(), key=lambda r: (r.relpath, str(r.path)))
