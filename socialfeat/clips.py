"""Clip planning: which time windows of a video become model inputs.

A clip is a plain record (video, window start, window length, content end,
coverage, extra columns).
- Whole recordings: windows tile the recording at a hop; the last partial window
  is kept when its content covers at least half a window.
- Segments (annotations or detected speech): a segment longer than a window is cut
  into the fewest equal pieces that fit a window, so clips start and end exactly
  at the segment's boundaries and no annotated time is lost.
Every interval yields at least one clip (a short one is padded as the reference
pads short videos).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from socialfeat.errors import UsageError

log = logging.getLogger(__name__)

MIN_COVERAGE = 0.5
_EPS = 1e-6


class SegmentsError(UsageError):
    """A segments (or labels, or annotation) file that cannot be used as given: a usage error."""


@dataclass(frozen=True)
class Clip:
    video_id: str
    clip_index: int
    start: float  # seconds on the video clock
    window: float  # nominal window length (s): frames are spread over it
    end: float  # end of real content (s): audio and frames beyond it are padding
    extra: dict[str, Any] = field(default_factory=dict)  # carried annotation columns

    @property
    def coverage(self) -> float:
        return max(0.0, min(1.0, (self.end - self.start) / self.window))


def iter_windows(start: float, end: float, clip_seconds: float, hop_seconds: float | None = None,
                 min_coverage: float = MIN_COVERAGE) -> Iterator[tuple[float, float]]:
    """(window start, content end) pairs tiling [start, end), one at a time: extraction takes
    them as decoding reaches them, so a container that claims a far longer duration than it
    holds does not make the plan run away."""
    if clip_seconds <= 0:
        raise ValueError(f"clip length must be positive, got {clip_seconds}")
    hop = clip_seconds if hop_seconds is None else hop_seconds
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    k = 0
    while True:
        s = start + k * hop  # multiply, don't accumulate: no float drift over long recordings
        if s >= end - _EPS:
            break
        e = min(s + clip_seconds, end)
        if (e - s) / clip_seconds + _EPS < min_coverage and k:
            break
        yield round(s, 6), round(e, 6)
        if s + clip_seconds >= end - _EPS:
            break
        k += 1


def plan_windows(start: float, end: float, clip_seconds: float, hop_seconds: float | None = None,
                 min_coverage: float = MIN_COVERAGE) -> list[tuple[float, float]]:
    """(window start, content end) pairs tiling [start, end)."""
    return list(iter_windows(start, end, clip_seconds, hop_seconds, min_coverage))


def split_segment(start: float, end: float, clip_seconds: float) -> list[tuple[float, float]]:
    """[start, end) in ceil(length / window) equal consecutive pieces."""
    n = max(1, math.ceil((end - start) / clip_seconds - _EPS))
    step = (end - start) / n
    return [(round(start + k * step, 6), round(start + (k + 1) * step if k < n - 1 else end, 6)) for k in range(n)]


def iter_clips(video_id: str, duration: float, clip_seconds: float, hop_seconds: float | None = None,
               segments: list[dict[str, Any]] | None = None) -> Iterator[Clip]:
    """Clips of one video, one at a time (see plan_video)."""
    if segments is None:
        intervals = [(0.0, duration, {})]
    else:
        intervals = []
        for i, seg in enumerate(segments):
            extra = {k: v for k, v in seg.items() if k not in ("video", "start", "end")}  # incl. segment_row
            extra["segment_index"] = i
            intervals.append((max(0.0, float(seg["start"])), min(duration, float(seg["end"])), extra))
    n = 0
    for a, b, extra in intervals:
        if b - a <= _EPS:
            continue
        pieces = iter_windows(a, b, clip_seconds, hop_seconds) if segments is None else \
            split_segment(a, b, clip_seconds)
        for s, e in pieces:
            yield Clip(video_id, n, s, clip_seconds, e, dict(extra))
            n += 1


def plan_video(video_id: str, duration: float, clip_seconds: float, hop_seconds: float | None = None,
               segments: list[dict[str, Any]] | None = None) -> list[Clip]:
    """Clips of one video: fixed windows over the whole recording (``hop_seconds``
    apart), or pieces of each segment (its extra columns carried along)."""
    return list(iter_clips(video_id, duration, clip_seconds, hop_seconds, segments))


def read_segments(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Annotation CSV (columns video, start, end in any letter case, any others) grouped by the
    ``video`` text as written; each segment keeps its line in the file (``segment_row``).

    Numbers in extra columns stay strings unless every value parses as a number. Which input
    video a ``video`` text means is decided by ``match_segments``.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    names = {c.strip().lower(): c for c in rows[0] if c is not None}
    missing = {"video", "start", "end"} - set(names)
    if missing:
        raise SegmentsError(f"{path}: segments file lacks column(s) {', '.join(sorted(missing))}; "
                            f"its columns are: {', '.join(map(repr, rows[0]))}")
    video_col, start_col, end_col = names["video"], names["start"], names["end"]
    extra_cols = [c for c in rows[0] if c not in (video_col, start_col, end_col)]
    numeric = {c for c in extra_cols if all(_is_number(r[c]) for r in rows)}
    out: dict[str, list[dict[str, Any]]] = {}
    for line, r in enumerate(rows, start=2):
        try:
            start, end = float(r[start_col]), float(r[end_col])
        except (TypeError, ValueError):
            raise SegmentsError(f"{path}:{line}: start/end must be seconds, got {r[start_col]!r}, "
                                f"{r[end_col]!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise SegmentsError(f"{path}:{line}: segment end {end} is not after start {start}")
        seg = {"video": r[video_col], "start": start, "end": end, "segment_row": line}
        for c in extra_cols:
            seg[c] = float(r[c]) if c in numeric else (r[c] or "")
        out.setdefault(r[video_col], []).append(seg)
    for segs in out.values():
        segs.sort(key=lambda s: (s["start"], s["end"]))
    return out


def match_segments(table: dict[str, list[dict[str, Any]]], videos: list, source: str | Path,
                   cwd: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The segments of each input video, keyed by its relative path: never a guess.

    A ``video`` text may be the path relative to an input root (``P01/session1.mp4``), a path as
    typed on the command line (``study/P01/session1.mp4``, relative to the working folder, or
    absolute), or a file name that only one input video has. A name that fits several videos is
    a SegmentsError listing them; rows that match no video are listed by line in a warning.
    """
    cwd = (cwd or Path.cwd()).resolve()
    by_rel = {v.relpath: v for v in videos}
    by_path = {str(v.path): v for v in videos}
    by_name: dict[str, list] = {}
    for v in videos:
        by_name.setdefault(v.path.name, []).append(v)
    out: dict[str, list[dict[str, Any]]] = {}
    unmatched: list[str] = []
    for text, segs in table.items():
        key = text.strip().replace("\\", "/")
        typed = Path(key) if Path(key).is_absolute() else cwd / key
        hit = by_rel.get(key) or by_path.get(str(typed.resolve()))
        if hit is None:
            fits = by_name.get(Path(key).name, []) if "/" not in key else []
            if len(fits) > 1:
                raise SegmentsError(f"{source}: video {text!r} (line {segs[0].get('segment_row', '?')}) fits "
                                    f"{len(fits)} input videos: {', '.join(v.relpath for v in fits)}; "
                                    "write the path relative to its input folder")
            hit = fits[0] if fits else None
        if hit is None:
            unmatched += [str(s.get("segment_row", "?")) for s in segs]
            continue
        out.setdefault(hit.relpath, []).extend(segs)
    if unmatched:
        log.warning("%s: line(s) %s name no input video (by relative path, path or file name)", source,
                    ", ".join(sorted(unmatched, key=lambda x: int(x) if x.isdigit() else 0)))
    for segs in out.values():
        segs.sort(key=lambda s: (s["start"], s["end"]))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
