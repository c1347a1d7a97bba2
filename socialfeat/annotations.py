"""ELAN (.eaf) and Praat (.TextGrid) annotation files as segments of the videos they describe.

Researchers code their recordings in ELAN and Praat (turns, gaze, gestures, therapy phases),
one file per recording, several tiers per file. This module has one job: read those files,
put every annotation on its video's clock and decide, without guessing, which file belongs
to which video. Its output is plain records -- rows of video, start, end, tier, value,
annotation_file -- that either feed the same clip planner as a segments CSV
(``segments_table``) or label clips planned otherwise (``label_clips``).

Parsing is pympi-ling's (it reads both formats); around it this module adds what
researchers' files need and pympi leaves to the caller: TextGrid text encodings (UTF-8,
UTF-16 with or without BOM, Latin-1), numbers in exponent notation (pympi misreads them),
ELAN time slots without a time (interpolated, as ELAN displays them), symbolic tiers
(their parent's time), media offsets (TIME_ORIGIN) and one-line errors instead of tracebacks.
"""

from __future__ import annotations

import codecs
import io
import logging
import math
import re
import warnings
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence
from urllib.parse import unquote, urlparse
from xml.etree.ElementTree import ParseError

from socialfeat.clips import SegmentsError, csv_records, nfc
from socialfeat.walk import VideoRef

if TYPE_CHECKING:  # imported where a table is made (0.2 s of every extract's start-up otherwise)
    import pandas as pd

log = logging.getLogger(__name__)
SUFFIXES = (".eaf", ".textgrid")
TABLE_COLUMNS = ["video", "start", "end", "tier", "value", "annotation_file"]
OVERRUN_TOLERANCE_S = 0.5  # as media.TRUNCATION_TOLERANCE_S: container durations are that loose
_EPS = 1e-9

Interval = tuple[float, float, str]  # (start s, end s, value)


class AnnotationError(SegmentsError):
    """An annotation file, or the match of files to videos, that cannot be used as given."""


@dataclass(frozen=True)
class MediaLink:
    """One MEDIA_DESCRIPTOR of an ELAN file."""

    url: str  # MEDIA_URL (absolute) or RELATIVE_MEDIA_URL (relative to the .eaf)
    relative_url: str
    origin_s: float  # TIME_ORIGIN: the media time (s) at annotation time 0
    mime: str = ""


@dataclass
class AnnotationFile:
    """The selected tiers of one file, on the file's own clock (seconds)."""

    path: Path
    name: str  # as reported and stored: relative to the folder it was found in, or the file name
    tiers: dict[str, list[Interval]]  # sorted, non-overlapping
    media: list[MediaLink] = field(default_factory=list)
    all_tiers: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- finding files
def is_annotation_source(source: str | Path | Sequence[str | Path] | None) -> bool:
    """True for an .eaf/.TextGrid file, a folder (read as one of annotation files), or a list of them."""
    if source is None or isinstance(source, (str, Path)) and str(source) == "speech":
        return False
    items = [source] if isinstance(source, (str, Path)) else list(source)
    return bool(items) and all(Path(p).is_dir() or Path(p).suffix.lower() in SUFFIXES for p in items)


def find_annotation_files(sources: str | Path | Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(path, name) of every annotation file given or found under the folders given (recursively).
    The name is the path relative to its folder, or the bare file name for a file given directly."""
    items = [sources] if isinstance(sources, (str, Path)) else list(sources)
    found: dict[Path, str] = {}
    for item in map(Path, items):
        if item.is_dir():
            for p in sorted(item.rglob("*")):
                if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."):
                    found.setdefault(p.resolve(), p.relative_to(item).as_posix())
        elif item.is_file():
            if item.suffix.lower() not in SUFFIXES:
                raise AnnotationError(f"{item}: not an ELAN (.eaf) or Praat (.TextGrid) file")
            found.setdefault(item.resolve(), item.name)
        else:
            raise AnnotationError(f"{item}: no such file or folder")
    if not found:
        raise AnnotationError(f"no .eaf or .TextGrid file in {', '.join(map(str, items))}")
    return list(found.items())


# ---------------------------------------------------------------- reading
def read_annotation_file(path: str | Path, name: str | None = None, tiers: Sequence[str] | None = None,
                         keep_empty: bool = False) -> AnnotationFile:
    """The tiers of one .eaf or .TextGrid file: ``tiers`` by name (those this file has), or by
    default every time-aligned tier. TextGrid intervals without text are gaps, not annotations,
    unless ``keep_empty``. Raises AnnotationError (one line, naming the file) on anything unusable."""
    path = Path(path).resolve()
    name = name or path.name
    reader = _read_eaf if path.suffix.lower() == ".eaf" else _read_textgrid
    return reader(path, name, list(tiers) if tiers is not None else None, keep_empty)


def _finish_tier(name: str, tier: str, items: list[Interval]) -> list[Interval]:
    """Sorted annotations of a tier; zero-length ones dropped, overlaps refused (a tier codes one
    thing at a time: which of two overlapping values labels a clip would be a guess)."""
    out = []
    for s, e, v in items:
        if not (math.isfinite(s) and math.isfinite(e)) or e < s - _EPS:
            raise AnnotationError(f"{name}: tier '{tier}': annotation '{v}' ends ({e}) before it starts ({s})")
        if e - s > _EPS:
            out.append((round(s, 6), round(e, 6), v))
    out.sort(key=lambda it: (it[0], it[1]))
    for (s0, e0, v0), (s1, e1, v1) in zip(out, out[1:]):
        if s1 < e0 - 1e-6:
            raise AnnotationError(f"{name}: tier '{tier}': annotations '{v0}' ({s0:.3f}-{e0:.3f} s) and '{v1}' "
                                  f"({s1:.3f}-{e1:.3f} s) overlap; a tier must not overlap itself")
    return out


def _read_eaf(path: Path, name: str, wanted: list[str] | None, keep_empty: bool) -> AnnotationFile:
    from pympi.Elan import Eaf

    try:
        with warnings.catch_warnings():  # pympi warns about unknown EAF versions: parsed all the same
            warnings.simplefilter("ignore")
            eaf = Eaf(str(path))
    except Exception as e:  # pympi raises a bare Exception (or KeyError...) on files it cannot parse
        cause = e.__context__ if isinstance(e.__context__, ParseError) else e
        raise AnnotationError(f"{name}: not a readable ELAN file ({type(cause).__name__}: {cause})") from None
    units = eaf.header.get("TIME_UNITS", "milliseconds")
    if units != "milliseconds":
        raise AnnotationError(f"{name}: time units '{units}' are not supported (ELAN writes milliseconds)")
    media = []
    for d in eaf.media_descriptors:
        try:
            origin = float(d.get("TIME_ORIGIN") or 0) / 1000.0
        except ValueError:
            raise AnnotationError(f"{name}: TIME_ORIGIN {d.get('TIME_ORIGIN')!r} is not a number of ms") from None
        media.append(MediaLink(d.get("MEDIA_URL", ""), d.get("RELATIVE_MEDIA_URL", ""), origin, d.get("MIME_TYPE", "")))
    types = eaf.linguistic_types
    spans = _EafSpans(eaf, name)
    tiers: dict[str, list[Interval]] = {}
    for tier_id, (aligned, refs, attrib, _) in eaf.tiers.items():
        ltype = types.get(attrib.get("LINGUISTIC_TYPE_REF", ""), {})
        time_aligned = ltype.get("TIME_ALIGNABLE", "true") == "true" and not refs
        if wanted is None and not time_aligned or wanted is not None and tier_id not in wanted:
            continue
        items = [(*spans.span(aid), value) for aid, (_, _, value, _) in aligned.items()]
        items += [(*spans.span(aid), value) for aid, (_, value, _, _) in refs.items()]
        tiers[tier_id] = _finish_tier(name, tier_id, [(s / 1000.0, e / 1000.0, v or "") for s, e, v in items])
    return AnnotationFile(path, name, tiers, media, list(eaf.tiers))


class _EafSpans:
    """Times (ms) of ELAN annotations. Time slots without a value (inside Time_Subdivision
    tiers) are spread evenly between their aligned neighbours; reference annotations take
    their parent's span, shared evenly among siblings (Symbolic_Subdivision) -- as ELAN shows them."""

    def __init__(self, eaf, name: str):
        self.eaf, self.name = eaf, name
        self.times: dict[str, float | None] = {k: (None if v is None else float(v)) for k, v in eaf.timeslots.items()}
        self.memo: dict[str, tuple[float, float]] = {}
        for tier in self._parents_first(eaf.tiers):
            self._interpolate(eaf.tiers[tier][0])

    @staticmethod
    def _parents_first(tiers: dict) -> list[str]:
        """Tier ids, each after its PARENT_REF. A nested Time_Subdivision shares its parent's
        unaligned slots: interpolated first, its chain would run past the parent's boundaries and
        spread its own annotations evenly over the grandparent (ELAN may save a child tier first)."""
        def depth(tier: str) -> int:
            seen = {tier}
            while (tier := tiers[tier][2].get("PARENT_REF")) in tiers and tier not in seen:
                seen.add(tier)
            return len(seen)
        return sorted(tiers, key=depth)

    def _interpolate(self, aligned: dict) -> None:
        nxt = {a[0]: a[1] for a in aligned.values()}
        if all(self.times.get(s) is not None for pair in nxt.items() for s in pair):
            return
        for head in [s for s in nxt if s not in set(nxt.values())]:
            chain, seen = [head], {head}
            while chain[-1] in nxt and nxt[chain[-1]] not in seen:
                chain.append(nxt[chain[-1]])
                seen.add(chain[-1])
            known = [i for i, s in enumerate(chain) if self.times.get(s) is not None]
            for a, b in zip(known, known[1:]):
                ta, tb = self.times[chain[a]], self.times[chain[b]]
                for i in range(a + 1, b):
                    self.times[chain[i]] = ta + (tb - ta) * (i - a) / (b - a)

    def span(self, aid: str) -> tuple[float, float]:
        if aid in self.memo:
            return self.memo[aid]
        self.memo[aid] = (math.nan, math.nan)  # guards against reference cycles
        tier = self.eaf.annotations.get(aid)
        aligned, refs = self.eaf.tiers[tier][:2] if tier in self.eaf.tiers else ({}, {})
        if aid in aligned:
            s, e = (self.times.get(aligned[aid][i]) for i in (0, 1))
            if s is None or e is None:
                raise AnnotationError(f"{self.name}: tier '{tier}': annotation '{aligned[aid][2]}' has no time "
                                      "(an unaligned time slot with no aligned neighbour)")
        elif aid in refs:
            parent = refs[aid][0]
            if self.eaf.annotations.get(parent) is None:
                raise AnnotationError(f"{self.name}: tier '{tier}': annotation {aid} refers to a missing "
                                      f"annotation {parent}")
            ps, pe = self.span(parent)
            siblings = self._siblings(refs, parent)
            k, n = siblings.index(aid), len(siblings)
            s, e = ps + (pe - ps) * k / n, ps + (pe - ps) * (k + 1) / n
        else:
            raise AnnotationError(f"{self.name}: annotation {aid} not found")
        self.memo[aid] = (s, e)
        return s, e

    @staticmethod
    def _siblings(refs: dict, parent: str) -> list[str]:
        """Reference annotations of one parent, in their PREVIOUS_ANNOTATION order."""
        group = {a: r[2] for a, r in refs.items() if r[0] == parent}
        following = {prev: a for a, prev in group.items() if prev in group}
        order = [a for a, prev in group.items() if prev not in group][:1] or list(group)[:1]
        while order[-1] in following and following[order[-1]] not in order:
            order.append(following[order[-1]])
        return order + [a for a in group if a not in order]


_NUMBER_LINE = re.compile(r"^(\s*(?:[A-Za-z][\w\[\]? :]*=\s*)?)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(\s*)$")


def _decode(raw: bytes, name: str) -> str:
    """Praat writes ASCII/UTF-8 or UTF-16 (big-endian with a BOM); other tools write UTF-16
    without a BOM or Latin-1."""
    try:
        for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_BE, "utf-16"),
                         (codecs.BOM_UTF16_LE, "utf-16")):
            if raw.startswith(bom):
                return raw.decode(enc)
        if len(raw) >= 2 and raw[0] == 0 and raw[1] != 0:
            return raw.decode("utf-16-be")
        if len(raw) >= 2 and raw[1] == 0 and raw[0] != 0:
            return raw.decode("utf-16-le")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{name}: damaged UTF-16 text ({e.reason} at byte {e.start})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8 or UTF-16; read as Latin-1", name)
        return raw.decode("latin-1")


def _plain_numbers(text: str, name: str) -> str:
    """Numbers in exponent notation written out (pympi's parser reads '1e-05' as 5.0);
    negative times refused (it would drop the sign)."""
    out, in_string = [], False
    for line in text.split("\n"):
        m = None if in_string or '"' in line else _NUMBER_LINE.match(line)
        if m:
            value = float(m.group(2))
            if value < 0:
                raise AnnotationError(f"{name}: negative time or number ({m.group(2)}) is not supported")
            if "e" in m.group(2).lower():
                line = m.group(1) + f"{value:.9f}".rstrip("0").rstrip(".") + m.group(3)
        out.append(line)
        in_string ^= line.count('"') % 2 == 1
    return "\n".join(out)


def _read_textgrid(path: Path, name: str, wanted: list[str] | None, keep_empty: bool) -> AnnotationFile:
    from pympi.Praat import TextGrid

    raw = path.read_bytes()
    if not raw.startswith(b"ooBinaryFile"):
        text = _decode(raw, name).replace("\r\n", "\n").replace("\r", "\n")
        head = text[:200]
        if "ooTextFile" not in head or "TextGrid" not in head:
            raise AnnotationError(f"{name}: not a Praat TextGrid (no 'File type = \"ooTextFile\"' / "
                                  "'Object class = \"TextGrid\"' header)")
        raw = _plain_numbers(text, name).encode("utf-8")
    grid = TextGrid(xmax=0)
    try:
        grid.from_file(io.BytesIO(raw), "utf-8")
    except Exception as e:  # pympi's parser fails with StopIteration, AttributeError... on damaged files
        raise AnnotationError(f"{name}: not a readable TextGrid (damaged or truncated: "
                              f"{type(e).__name__} {e})".replace(" )", ")")) from None
    names = [t.name for t in grid.tiers]
    tiers: dict[str, list[Interval]] = {}
    for tier in grid.tiers:
        if wanted is not None and tier.name not in wanted:
            continue
        if tier.tier_type != "IntervalTier":
            if wanted is not None:
                raise AnnotationError(f"{name}: tier '{tier.name}' is a point tier (TextTier): its marks have "
                                      "no duration to be segments")
            continue
        if tier.name in tiers:
            raise AnnotationError(f"{name}: two tiers are named '{tier.name}'; rename one in Praat")
        items = [(float(s), float(e), str(v)) for s, e, v in tier.intervals if keep_empty or str(v).strip()]
        tiers[tier.name] = _finish_tier(name, tier.name, items)
    return AnnotationFile(path, name, tiers, [], names)


# ---------------------------------------------------------------- matching files to videos
@dataclass(frozen=True)
class Match:
    file: AnnotationFile
    origin_s: float  # added to the file's times to get the video's
    how: str  # 'map', 'media' or 'name'


def _url_path(url: str) -> str:
    """The path of a media URL: file:///C:/x/a.mp4, file:/home/x/a.mp4, ./a.mp4, ..\\v\\a.mp4."""
    url = url.strip().replace("\\", "/")
    if url.lower().startswith("file:"):
        url = unquote(urlparse(url).path) if "://" in url else unquote(url[5:])
        if re.match(r"^/[A-Za-z]:/", url):  # Windows drive after file:///
            url = url[1:]
    return url


def _tail_score(parts: list[str], ref: VideoRef | str) -> int:
    """How many trailing path components a media path shares with a video's relative path."""
    rel = nfc(ref if isinstance(ref, str) else ref.relpath).split("/")
    parts = [nfc(p) for p in parts]
    n = 0
    while n < min(len(parts), len(rel)) and parts[-1 - n] == rel[-1 - n]:
        n += 1
    return n


def _videos_for_link(link: MediaLink, file: AnnotationFile, videos: Sequence[VideoRef]) -> list[VideoRef]:
    """Videos an ELAN media link points at: the same file (the relative URL resolved against
    the .eaf's folder, or the absolute URL), else the video whose relative path ends like the
    link's path, longest tail winning (ELAN files travel between machines: absolute paths go
    stale). A tail that fits two videos equally is an error, not a pick."""
    exact: list[VideoRef] = []
    best: tuple[int, list[VideoRef]] = (0, [])
    by_path = {ref.path: ref for ref in videos}
    for url in (link.relative_url, link.url):
        path = _url_path(url)
        if not path:
            continue
        p = Path(path)
        try:
            ref = by_path.get((p if p.is_absolute() else file.path.parent / p).resolve())
        except OSError:
            ref = None
        if ref is not None and ref not in exact:
            exact.append(ref)
        parts = [x for x in PurePosixPath(path).parts if x not in ("/", ".", "..")]
        for ref in videos:
            score = _tail_score(parts, ref)
            if score and score > best[0]:
                best = (score, [ref])
            elif score and score == best[0] and ref not in best[1]:
                best[1].append(ref)
    if exact or len(best[1]) < 2:
        return exact or best[1]
    fits = ", ".join(r.relpath for r in best[1])
    raise AnnotationError(f"{file.name}: its media link {link.relative_url or link.url!r} fits several videos "
                          f"({fits}); say which in --annotation-map")


def _same_subfolders(file: AnnotationFile, refs: list[VideoRef]) -> list[VideoRef]:
    """Of videos named like ``file``, the one whose relative path has the file's relative folders
    (``site1/cam.TextGrid`` in an annotation folder that mirrors the video folder: ``site1/cam.mp4``,
    not ``site2/cam.mp4``); all of them when no single one has more of them than the others."""
    parts = PurePosixPath(file.name).with_suffix("").parts
    scores = [_tail_score(list(parts), PurePosixPath(ref.relpath).with_suffix("").as_posix()) for ref in refs]
    best = max(scores)
    return [refs[scores.index(best)]] if best > 1 and scores.count(best) == 1 else refs


def _in_video_folders(ref: VideoRef, matches: list[Match]) -> list[Match]:
    """Of annotation files matched to ``ref`` by name alone, the one whose relative folders end the
    video's own path (``site1/cam.TextGrid`` for ``.../site1/cam.mp4`` when only site1's folder was
    given, so that its relative path is ``cam.mp4``); all of them when no single one fits best."""
    video = PurePosixPath(ref.path.as_posix()).with_suffix("").as_posix()
    scores = [_tail_score(list(PurePosixPath(m.file.name).with_suffix("").parts), video) for m in matches]
    best = max(scores)
    return [matches[scores.index(best)]] if best > 1 and scores.count(best) == 1 else matches


def _origin_for(file: AnnotationFile, ref: VideoRef) -> float:
    """TIME_ORIGIN of the media link that names this video, else of the first video link."""
    if not file.media:
        return 0.0
    for link in file.media:
        if any(PurePosixPath(_url_path(u)).name == ref.path.name for u in (link.url, link.relative_url) if u):
            return link.origin_s
    videos = [link for link in file.media if link.mime.startswith("video")]
    return (videos or file.media)[0].origin_s


def _read_map(mapping: str | Path, files: list[AnnotationFile],
              videos: Sequence[VideoRef]) -> dict[int, list[VideoRef]]:
    """Rows of a mapping CSV (annotation_file, video) as file index -> videos. Read as a segments
    CSV is (clips.csv_records): a spreadsheet's encodings and empty rows are not errors, and a row
    missing a cell is one naming its line, not a traceback."""
    mapping = Path(mapping)
    header, records, _ = csv_records(mapping)
    cols = {c.lower(): i for i, c in enumerate(header or [])}
    key = next((cols[c] for c in ("annotation_file", "annotation") if c in cols), None)
    if key is None or "video" not in cols:
        raise AnnotationError(f"{mapping}: a mapping needs columns annotation_file and video")
    out: dict[int, list[VideoRef]] = {}
    for line, cells in records:
        entry, video = cells[key].strip(), cells[cols["video"]].strip()
        if not entry or not video:
            raise AnnotationError(f"{mapping}:{line}: a row needs both an annotation file and a video")
        target = (mapping.parent / entry).resolve()
        idx = [i for i, a in enumerate(files) if a.path == target or nfc(entry) in map(nfc, (a.name, a.path.name))]
        if len(idx) != 1:
            raise AnnotationError(f"{mapping}:{line}: annotation file '{entry}' is "
                                  f"{'not among the annotation files given' if not idx else 'ambiguous'}")
        vpath = (mapping.parent / video).resolve()
        refs = [r for r in videos if nfc(video) in map(nfc, (r.relpath, r.path.name, str(r.path)))
                or r.path == vpath]
        if len(refs) != 1:
            raise AnnotationError(f"{mapping}:{line}: video '{video}' "
                                  f"{'is not among the input videos' if not refs else 'names several videos'}")
        out.setdefault(idx[0], []).append(refs[0])
    return out


def match_files(files: list[AnnotationFile], videos: Sequence[VideoRef],
                mapping: str | Path | None = None) -> tuple[dict[str, list[Match]], list[str]]:
    """Which annotation file belongs to which video: a mapping CSV first, then the media path an
    ELAN file stores, then the file name (``session01.eaf`` <-> ``session01.mp4``). One file may
    describe several videos (an ELAN file linking two cameras); a video with two candidate files,
    or a name that fits two videos, is an AnnotationError naming them. Returns the matches by
    video relative path and the names of the files that match no video."""
    mapped = _read_map(mapping, files, videos) if mapping else {}
    by_video: dict[str, list[Match]] = {}
    unmatched: list[str] = []
    for i, file in enumerate(files):
        found: list[tuple[VideoRef, str, float | None]] = []  # (video, how, TIME_ORIGIN of the link)
        if i in mapped:
            found = [(ref, "map", None) for ref in mapped[i]]
        for link in file.media if i not in mapped else ():
            found += [(ref, "media", link.origin_s) for ref in _videos_for_link(link, file, videos)
                      if all(ref != r for r, _, _ in found)]
        if not found and i not in mapped:
            by_name = [ref for ref in videos if nfc(PurePosixPath(ref.relpath).stem) == nfc(file.path.stem)]
            if len(by_name) > 1:  # prefer the one beside the file, then the one in the same subfolders
                by_name = [ref for ref in by_name if ref.path.parent == file.path.parent] or \
                    _same_subfolders(file, by_name)
            if len(by_name) > 1:
                fits = ", ".join(r.relpath for r in by_name)
                raise AnnotationError(f"{file.name}: its name fits several videos ({fits}); say which in "
                                      "--annotation-map")
            found = [(ref, "name", None) for ref in by_name]
            if file.media and found:
                log.info("%s: media link(s) %s match no input video; matched by name to %s", file.name,
                         [link.relative_url or link.url for link in file.media], found[0][0].relpath)
        if not found:
            unmatched.append(file.name)
        for ref, how, origin in found:
            by_video.setdefault(ref.relpath, []).append(
                Match(file, _origin_for(file, ref) if origin is None else origin, how))
    for video, matches in by_video.items():
        if len(matches) > 1 and all(m.how == "name" for m in matches):  # e.g. one site's videos given, the
            kept = _in_video_folders(next(r for r in videos if r.relpath == video), matches)  # whole annotation tree
            unmatched += [m.file.name for m in matches if all(m is not k for k in kept)]
            matches[:] = kept
        if len(matches) > 1 and any(m.how != "map" for m in matches):
            names = ", ".join(f"{m.file.name} (by {m.how})" for m in matches)
            raise AnnotationError(f"{video}: several annotation files match it: {names}; keep one, or list "
                                  "both in --annotation-map")
    if unmatched:
        log.warning("annotation file(s) matching no input video, not used: %s", ", ".join(unmatched))
    return by_video, unmatched


# ---------------------------------------------------------------- the table and its uses
@dataclass
class AnnotationSet:
    """Annotations matched to videos, on each video's clock (TIME_ORIGIN applied)."""

    by_video: dict[str, dict[str, list[tuple[float, float, str, str]]]]  # video -> tier -> (start, end, value, file)
    tiers: list[str]  # tier names, in the order first met
    unmatched: list[str] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """One row per annotation: video, start, end, tier, value, annotation_file."""
        import pandas as pd

        rows = [{"video": v, "start": s, "end": e, "tier": t, "value": val, "annotation_file": f}
                for v, tiers in self.by_video.items() for t, items in tiers.items() for s, e, val, f in items]
        return pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values(["video", "start", "end"], kind="stable",
                                                                        ignore_index=True)


def load_annotations(sources: str | Path | Sequence[str | Path], videos: Sequence[VideoRef], *,
                     tiers: Sequence[str] | None = None, keep_empty: bool = False,
                     mapping: str | Path | None = None) -> AnnotationSet:
    """Read every annotation file in ``sources`` and match it to ``videos`` (see match_files).
    A tier named in ``tiers`` that no file has is an error (a typo would silently yield nothing)."""
    files = [read_annotation_file(p, name, tiers, keep_empty) for p, name in find_annotation_files(sources)]
    if tiers is not None:
        missing = [t for t in tiers if not any(t in f.tiers for f in files)]
        if missing:
            have = sorted({t for f in files for t in f.all_tiers})
            raise AnnotationError(f"no annotation file has a tier named {', '.join(map(repr, missing))} "
                                  f"(tiers found: {', '.join(have) or 'none'})")
    matches, unmatched = match_files(files, videos, mapping)
    names: list[str] = []
    by_video: dict[str, dict[str, list]] = {}
    for video, found in matches.items():
        out: dict[str, list] = {}
        for m in found:
            for tier, items in m.file.tiers.items():
                if tier in out:
                    raise AnnotationError(f"{video}: tier '{tier}' is in more than one of its annotation files")
                out[tier] = [(round(s + m.origin_s, 6), round(e + m.origin_s, 6), v, m.file.name) for s, e, v in items]
                names += [tier] if tier not in names else []
        by_video[video] = out
    for f in files:  # tiers of unmatched files too, so that columns do not depend on matching
        names += [t for t in f.tiers if t not in names]
    return AnnotationSet(by_video, list(tiers) if tiers is not None else names, unmatched)


def segments_table(annotations: AnnotationSet) -> dict[str, list[dict[str, Any]]]:
    """Annotations as segments, shaped like clips.read_segments (video -> rows sorted by time), so
    they take the same path to the clip planner as a CSV. Each row carries tier, value,
    annotation_file and the annotation's own bounds (annotation_start/_end), kept on every piece
    a long annotation is cut into."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in annotations.table.itertuples(index=False):
        out.setdefault(row.video, []).append(
            {"video": row.video, "start": row.start, "end": row.end, "tier": row.tier, "value": row.value,
             "annotation_file": row.annotation_file, "annotation_start": row.start, "annotation_end": row.end})
    return out


def label_clips(clips: list[dict[str, Any]], annotations: AnnotationSet, video: str) -> list[dict[str, Any]]:
    """Add, for every tier, the value covering most of each clip ``[start_s, end_s)`` (``<tier>``)
    and the share of the clip it covers (``<tier>_coverage``): ready-made predictors for a mixed
    model. No annotation there: '' and 0.0; no such tier for this video at all: '' and NaN."""
    tiers = annotations.by_video.get(video, {})
    for tier in annotations.tiers:
        items = tiers.get(tier)
        ends = [e for _, e, _, _ in items] if items else []
        for clip in clips:
            a, b = float(clip["start_s"]), float(clip["end_s"])
            value, share = "", (math.nan if items is None else 0.0)
            if items and b > a:
                cover: dict[str, float] = {}
                for s, e, v, _ in items[bisect_right(ends, a):]:
                    if s >= b:
                        break
                    cover[v] = cover.get(v, 0.0) + min(e, b) - max(s, a)
                if cover:
                    value = max(cover, key=cover.get)  # ties: the value met first
                    share = round(min(1.0, cover[value] / (b - a)), 6)
            clip[tier], clip[f"{tier}_coverage"] = value, share
    return clips


def overruns(annotations: AnnotationSet, video: str, duration: float | None) -> list[str]:
    """One message per (file, tier) whose annotations end after the video does (wrong file,
    wrong TIME_ORIGIN, or a shorter export): flagged rather than cut silently."""
    if duration is None or not math.isfinite(duration):
        return []
    msgs = []
    for tier, items in annotations.by_video.get(video, {}).items():
        late: dict[str, float] = {}
        for s, e, _, f in items:
            if e > duration + OVERRUN_TOLERANCE_S:
                late[f] = max(late.get(f, 0.0), e)
        msgs += [f"{f}: tier '{tier}' runs to {e:.2f} s, past the end of the video ({duration:.2f} s); "
                 "the time after the end is not used" for f, e in late.items()]
    return msgs


def check_column_names(tiers: Iterable[str], taken: Iterable[str],
                       is_taken: Callable[[str], bool] = lambda name: False) -> None:
    """``--annotate`` columns must not overwrite clip columns (``taken``, or those ``is_taken`` says),
    nor each other (tiers ``gaze`` and ``gaze_coverage``: the second's labels would replace the first's
    coverage)."""
    tiers = list(tiers)
    taken = set(taken)
    own = {c: t for t in tiers for c in (t, f"{t}_coverage")}  # column -> the tier that writes it
    clash = [t for t in tiers if any(c in taken or is_taken(c) or own.get(c, t) != t for c in (t, f"{t}_coverage"))
             or not t.strip() or "/" in t]
    if clash:
        raise AnnotationError(f"tier name(s) {', '.join(map(repr, clash))} cannot be clip columns (empty, "
                              "contains '/', or clashes with a column already there or with another tier's "
                              "<tier>_coverage); pick tiers with --tiers")
