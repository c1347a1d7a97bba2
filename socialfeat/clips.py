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

import codecs
import csv
import io
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from socialfeat.errors import UsageError

log = logging.getLogger(__name__)

MIN_COVERAGE = 0.5
MIN_SECONDS = 0.01  # shortest window and hop: 100 windows a second is beyond any use, 1e-9 plans forever
_EPS = 1e-6
# columns the planner adds to every segment's clips: a segments file must not bring its own
PLANNER_COLUMNS = ("segment_row", "segment_index")


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


def read_segments(path: str | Path, taken: Callable[[str], bool] = lambda name: False
                  ) -> dict[str, list[dict[str, Any]]]:
    """Annotation CSV (columns video, start, end in any letter case, any others) grouped by the
    ``video`` text as written; each segment keeps its line in the file (``segment_row``).

    The other columns are carried into the clips table, so one named like a column the tool
    writes (``taken``, and ``segment_row`` / ``segment_index``) is refused: it would overwrite
    or shadow it. Their types are read as a spreadsheet user means them (see ``_column_values``).
    Spreadsheet residue is ignored: rows of empty cells, empty cells past the header's columns,
    columns without a name and without values. Which input video a ``video`` text means is
    decided by ``match_segments``.
    """
    path = Path(path)
    header, records, delimiter = csv_records(path)
    if header is None:
        return {}
    comma = delimiter == ";"  # Excel's CSV where the decimal separator is a comma
    names = _column_names(path, header, records)
    video_col, start_col, end_col = (names[k] for k in ("video", "start", "end"))
    extra_cols = [i for i, c in enumerate(header) if c and i not in (video_col, start_col, end_col)]
    _refuse_taken(path, [header[i] for i in extra_cols], taken)
    values = {i: _column_values([cells[i] for _, cells in records], comma) for i in extra_cols}
    out: dict[str, list[dict[str, Any]]] = {}
    for k, (line, cells) in enumerate(records):
        start, end = _bounds(path, line, cells[start_col], cells[end_col], comma)
        seg = {"video": cells[video_col], "start": start, "end": end, "segment_row": line}
        seg.update({header[i]: values[i][k] for i in extra_cols})
        out.setdefault(cells[video_col], []).append(seg)
    for segs in out.values():
        segs.sort(key=lambda s: (s["start"], s["end"]))
    return out


def _decode_csv(path: Path) -> str:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; otherwise Windows-1252, what Excel's
    plain 'CSV' writes on Western-European Windows (a superset of Latin-1's printable
    characters), said in a warning since the file may be in another code page."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig")
    except UnicodeDecodeError as e:
        if e.encoding.startswith("utf-16"):
            raise SegmentsError(f"{path}: damaged UTF-16 text ({e.reason} at byte {e.start})") from None
        line = raw[:e.start].count(b"\n") + 1
        log.warning("%s: not UTF-8 (line %d); read as Windows-1252 -- if its accented letters come out "
                    "wrong, save it as 'CSV UTF-8'", path, line)
        return raw.decode("cp1252", errors="replace")


def _delimiter(text: str) -> str:
    """',' unless the header (first non-empty line) has none and has ';' -- what Excel writes where
    the decimal separator is a comma (most of continental Europe) -- or tabs."""
    header = next((line for line in text.splitlines() if line.strip()), "")
    if "," in header:
        return ","
    return ";" if ";" in header else "\t" if "\t" in header else ","


def csv_records(path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]], str]:
    """The header, the data rows as (line where the row starts, cells padded to the header's
    width) and the delimiter (see _delimiter). Rows of empty cells are skipped; cells past the
    header's columns must be empty. Shared by every CSV a researcher hands in (segments,
    annotation maps), so that all read alike."""
    text = _decode_csv(path)
    delimiter = _delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[tuple[int, list[str]]] = []
    last = 0
    for row in reader:
        line, last = last + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            continue
        width = len(header)
        if any(cell.strip() for cell in row[width:]):
            raise SegmentsError(f"{path}:{line}: {len(row)} fields but the header names {width} columns; "
                                "name the extra column(s) in the header or remove the values")
        records.append((line, row[:width] + [""] * (width - len(row))))
    return header, records, delimiter


def _column_names(path: Path, header: list[str], records: list[tuple[int, list[str]]]) -> dict[str, int]:
    """Positions of video, start and end (any letter case); a header naming a column twice, or
    leaving out the name of a column that holds values, is refused."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        key = name.lower() if name.lower() in ("video", "start", "end") else name
        if not name and any(cells[i].strip() for _, cells in records):
            raise SegmentsError(f"{path}: column {i + 1} holds values but has no name in the header")
        if name and key in seen:
            raise SegmentsError(f"{path}: the header names column {name!r} twice; rename one")
        if name:
            seen[key] = i
    missing = {"video", "start", "end"} - set(seen)
    if missing:
        raise SegmentsError(f"{path}: segments file lacks column(s) {', '.join(sorted(missing))}; "
                            f"its columns are: {', '.join(map(repr, header))}")
    return seen


def _refuse_taken(path: Path, columns: list[str], taken: Callable[[str], bool]) -> None:
    """Extra columns become clip columns: one named like a column socialfeat writes is refused."""
    clash = [c for c in columns if c in PLANNER_COLUMNS or taken(c)]
    if clash:
        raise SegmentsError(f"{path}: column(s) {', '.join(map(repr, clash))} would overwrite or duplicate the "
                            "clip columns socialfeat writes (docs/format.md); rename them in the file")


_CLOCK = re.compile(r"(\d+):([0-5]?\d):([0-5]?\d(?:\.\d*)?)")


def _seconds(text: str, comma: bool) -> float:
    """Seconds from a time as spreadsheets and ELAN's text export write it: ``12.5``, ``12,5`` in a
    file whose decimal separator is a comma, or ``hh:mm:ss.mmm`` (three fields: Excel writes
    ``h:mm`` too, and ``1:30`` would be a guess between minutes and hours)."""
    text = text.strip()
    if comma and _DECIMAL_COMMA.fullmatch(text):
        text = text.replace(",", ".")
    clock = _CLOCK.fullmatch(text.replace(",", ".") if comma else text)
    if clock:
        return int(clock[1]) * 3600 + int(clock[2]) * 60 + float(clock[3])
    return float(text)


def _bounds(path: Path, line: int, start_text: str, end_text: str, comma: bool = False) -> tuple[float, float]:
    try:
        start, end = _seconds(start_text, comma), _seconds(end_text, comma)
    except ValueError:
        raise SegmentsError(f"{path}:{line}: start/end must be seconds or hh:mm:ss.mmm, got {start_text!r}, "
                            f"{end_text!r}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise SegmentsError(f"{path}:{line}: segment end {end} is not after start {start}")
    return start, end


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")
_INTEGER = re.compile(r"[-+]?\d+")
_LEADING_ZERO = re.compile(r"[-+]?0\d")
_INT64 = 2**63


def _column_values(cells: list[str], comma: bool = False) -> list[Any]:
    """The values of one extra column, typed as a researcher means them: numbers only when every
    filled cell is a plain decimal number (not 'NaN', 'inf' or '1_000', which Python's float
    reads but a name may be), text when any has a leading zero (IDs: 007 stays '007') or an
    integer does not fit 64 bits; whole numbers stay integers. An empty cell is None in a numeric
    column (NaN once stored; an integer column with one becomes float) and '' in a text column.
    ``comma``: the file's decimal separator is a comma (``0,75`` is a number)."""
    if comma and any(_DECIMAL_COMMA.fullmatch(c.strip()) for c in cells):
        points = [c.strip().replace(",", ".") if _DECIMAL_COMMA.fullmatch(c.strip()) else c for c in cells]
        typed = _column_values(points)
        if any(isinstance(v, float) for v in typed):
            return typed
    filled = [c.strip() for c in cells if c.strip()]
    numeric = bool(filled) and all(_DECIMAL.fullmatch(c) and not _LEADING_ZERO.match(c) for c in filled)
    if numeric and all(_INTEGER.fullmatch(c) for c in filled):
        if all(-_INT64 <= int(c) < _INT64 for c in filled):
            return [int(c) if c.strip() else None for c in cells]
        numeric = False
    if numeric:
        return [float(c) if c.strip() else None for c in cells]
    return list(cells)


def nfc(text: str) -> str:
    """Names compared as Unicode NFC: macOS file systems hand out 'é' decomposed (NFD), ELAN,
    Praat, Excel and Windows write it composed, so 'séance' would otherwise not be 'séance'."""
    return unicodedata.normalize("NFC", text)


def match_segments(table: dict[str, list[dict[str, Any]]], videos: list, source: str | Path,
                   cwd: Path | None = None, warn: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The segments of each input video, keyed by its relative path: never a guess.

    A ``video`` text may be the path relative to an input root (``P01/session1.mp4``), a path as
    typed on the command line (``study/P01/session1.mp4``, relative to the working folder, or
    absolute), or a file name that only one input video has. A name that fits several videos is
    a SegmentsError listing them; rows that match no video are listed by line in a warning (unless
    ``warn`` is False: a caller that reads the file again later, and warns then, says it once).
    """
    cwd = (cwd or Path.cwd()).resolve()
    by_rel = {nfc(v.relpath): v for v in videos}
    by_path = {nfc(str(v.path)): v for v in videos}
    by_name: dict[str, list] = {}
    for v in videos:
        by_name.setdefault(nfc(v.path.name), []).append(v)
    out: dict[str, list[dict[str, Any]]] = {}
    unmatched: list[str] = []
    for text, segs in table.items():
        key = nfc(text.strip().replace("\\", "/"))
        typed = Path(key) if Path(key).is_absolute() else cwd / key
        hit = by_rel.get(key) or by_path.get(nfc(str(typed.resolve())))
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
    if unmatched and warn:
        log.warning("%s: line(s) %s name no input video (by relative path, path or file name)", source,
                    ", ".join(sorted(unmatched, key=lambda x: int(x) if x.isdigit() else 0)))
    for segs in out.values():
        segs.sort(key=lambda s: (s["start"], s["end"]))
    return out
