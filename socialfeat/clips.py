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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from socialfeat.errors import UsageError

MIN_COVERAGE = 0.5
_EPS = 1e-6


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
            extra = {k: v for k, v in seg.items() if k not in ("video", "start", "end")}
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
    """Annotation CSV (columns video, start, end, any others) grouped by video.

    ``video`` may be a path relative to the input root or a file name. Numbers
    in extra columns stay strings unless every value parses as a number.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    missing = {"video", "start", "end"} - set(rows[0])
    if missing:
        raise UsageError(f"{path}: segments file lacks column(s) {', '.join(sorted(missing))}")
    extra_cols = [c for c in rows[0] if c not in ("video", "start", "end")]
    numeric = {c for c in extra_cols if all(_is_number(r[c]) for r in rows)}
    out: dict[str, list[dict[str, Any]]] = {}
    for line, r in enumerate(rows, start=2):
        try:
            start, end = float(r["start"]), float(r["end"])
        except ValueError:
            raise UsageError(f"{path}:{line}: start/end must be seconds, got {r['start']!r}, {r['end']!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise UsageError(f"{path}:{line}: segment end {end} is not after start {start}")
        seg = {"video": r["video"], "start": start, "end": end}
        for c in extra_cols:
            seg[c] = float(r[c]) if c in numeric else (r[c] or "")
        out.setdefault(r["video"], []).append(seg)
    for segs in out.values():
        segs.sort(key=lambda s: (s["start"], s["end"]))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
