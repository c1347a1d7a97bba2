"""Durable results: a per-video journal, the assembled HDF5 file, and readers.

During a run each finished video is written to its own small HDF5 file in
``<output>.parts/`` (temp file + atomic rename), so a killed run loses at most
the videos in flight and a rerun skips what is done. At the end the parts are
assembled, in input order, into the output file -- again through a temp file
and a rename, so the output is never half-written.

The output uses only plain HDF5 (column datasets, UTF-8 strings, numeric
attributes) so that R (hdf5r, rhdf5), MATLAB and Python read it alike;
docs/format.md describes every dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import h5py
import numpy as np

from socialfeat.atomic import atomic_path
from socialfeat.errors import InputNotFoundError, UsageError

if TYPE_CHECKING:  # pandas is imported where tables are read: 0.2 s that extract's start-up need not pay
    import pandas as pd

EMBEDDING_KINDS = ("joint", "audio", "visual")
STR = h5py.string_dtype("utf-8")


class VideoStatus(str, Enum):
    """The ``status`` of a row of the videos table (rows hold the plain string value)."""

    OK = "ok"  # every clip decoded cleanly
    DAMAGED = "damaged"  # clips written, but some packets could not be decoded
    TRUNCATED = "truncated"  # the file ends before its stated duration; the decodable part is used
    NO_CLIPS = "no_clips"  # readable, but no clip could be formed (too short, no speech ...)
    SKIPPED = "skipped"  # nothing asked of this video (no segments for it)
    ERROR = "error"  # unreadable: no clip at all

    def __str__(self) -> str:
        return self.value

    @property
    def clean(self) -> bool:
        return self is VideoStatus.OK


class Failure(str, Enum):
    """Why a video's verdict is not ok, as the journal keeps it: decides whether a rerun
    processes the video again (see extract.worth_retrying)."""

    CONTENT = "content"  # in the file's own bytes (not a media file, damaged): same bytes, same verdict
    TRANSIENT = "transient"  # reading failed (I/O error, permissions, an unexpected exception): try again
    CRASH = "crash"  # the video's decoding worker died (out of memory, a crash in a decoder)
    TIMEOUT = "timeout"  # its decoding made no progress for too long (a stalled file system, a pathological file)

    def __str__(self) -> str:
        return self.value


@dataclass
class VideoResult:
    """Everything one video contributes to the output."""

    video: dict[str, Any]  # one row of the videos table
    clips: list[dict[str, Any]] = field(default_factory=list)  # rows of the clips table
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (n_clips, D)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (n_clips, K)
    errors: list[dict[str, Any]] = field(default_factory=list)  # rows of the errors table
    failure: str = ""  # a Failure value, "" when the video is ok (journal only)
    strikes: int = 0  # runs in which it crashed or stalled its worker (journal only)
    run: str = ""  # the record of the run that made it (extract.run_record; journal only)

    def load(self, arrays: bool = True) -> VideoResult:
        """Itself: results held whole assemble like journalled ones (see JournalledVideo)."""
        return self


@dataclass
class JournalledVideo:
    """A finished video as a run keeps it until the end: its videos and errors rows and its clip
    count. Its clips and arrays stay in its journal part and are read back one video at a time
    when the output is assembled, so that what a run holds does not grow with its clips."""

    video: dict[str, Any]  # the videos row (may differ from the part's: a reused file's current path)
    errors: list[dict[str, Any]]  # the errors rows (annotation warnings are added at the end)
    n_clips: int
    part: Path  # its journal part (Journal.part_path)
    edit_clips: Callable[[list[dict[str, Any]]], Any] | None = None  # e.g. annotation columns, at each read

    def load(self, arrays: bool = True) -> VideoResult:
        """The video's whole result from its part; without ``arrays`` their shapes only, as
        zero-memory views (what assembly's first pass needs)."""
        with h5py.File(self.part, "r") as f:
            clips = json.loads(f.attrs["clips"])
            embeddings, predictions = _read_arrays(f) if arrays else _array_shapes(f)
        if self.edit_clips is not None:
            self.edit_clips(clips)
        return VideoResult(video=self.video, clips=clips, embeddings=embeddings, predictions=predictions,
                           errors=self.errors)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o).__name__)


@dataclass
class SpanResult:
    """A finished part of a long recording (spans [first, end) of pipeline.SPAN_SECONDS) that
    its video's run had not finished: ``record`` holds the part's VideoDone fields."""

    record: dict[str, Any]
    clips: list[dict[str, Any]]
    embeddings: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]


class Journal:
    """Per-video part files under ``<output>.parts``; a long recording's finished spans also
    have files of their own until the whole video is written (``<video_id>.span-<first>-<end>.h5``)."""

    def __init__(self, output: str | Path):
        self.dir = Path(str(output) + ".parts")

    def part_path(self, video_id: str) -> Path:
        return self.dir / f"{video_id}.h5"

    def span_path(self, video_id: str, span: tuple[int, int | None]) -> Path:
        return self.dir / f"{video_id}.span-{span[0]}-{'end' if span[1] is None else span[1]}.h5"

    def span_paths(self, video_id: str) -> list[Path]:
        return sorted(self.dir.glob(f"{video_id}.span-*.h5"))

    def write(self, result: VideoResult, fingerprint: str) -> None:
        """The whole video; its spans' files are then no longer needed, unless it failed: its clips are
        dropped then, and a run that tries it again resumes from its finished parts (a part whose
        worker crashed or whose read failed in the third hour of a recording costs that part only)."""
        with atomic_path(self.part_path(result.video["video_id"]), fsync=True) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["fingerprint"] = fingerprint
                f.attrs["failure"], f.attrs["strikes"] = str(result.failure), int(result.strikes)
                f.attrs["run"] = result.run
                f.attrs["video"] = json.dumps(result.video, default=_json_default)
                _write_rows_and_arrays(f, result.clips, result.errors, result.embeddings, result.predictions)
        if result.video["status"] == VideoStatus.ERROR:
            return
        for path in self.span_paths(result.video["video_id"]):
            path.unlink(missing_ok=True)

    def write_span(self, video_id: str, part: SpanResult, fingerprint: str) -> None:
        with atomic_path(self.span_path(video_id, tuple(part.record["span"])), fsync=True) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["fingerprint"] = fingerprint
                f.attrs["record"] = json.dumps(part.record, default=_json_default)
                _write_rows_and_arrays(f, part.clips, [], part.embeddings, part.predictions)

    def read_spans(self, video_id: str, fingerprint: str) -> list[SpanResult]:
        """The finished spans of a video that a run with this fingerprint journalled (others are ignored,
        and replaced when the video is written)."""
        parts = []
        for path in self.span_paths(video_id):
            try:
                with h5py.File(path, "r") as f:
                    if str(f.attrs["fingerprint"]) != fingerprint:
                        continue
                    parts.append(SpanResult(json.loads(f.attrs["record"]), json.loads(f.attrs["clips"]),
                                            *_read_arrays(f)))
            except (OSError, KeyError, ValueError):
                continue
        return parts

    def read(self, video_id: str, arrays: bool = True) -> tuple[VideoResult, str] | None:
        """A finished part and its fingerprint, or None when absent or unreadable; without
        ``arrays``, its embeddings and predictions are left empty (not read)."""
        path = self.part_path(video_id)
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r") as f:
                res = VideoResult(video=json.loads(f.attrs["video"]), clips=json.loads(f.attrs["clips"]),
                                  errors=json.loads(f.attrs["errors"]), failure=str(f.attrs.get("failure", "")),
                                  strikes=int(f.attrs.get("strikes", 0)), run=str(f.attrs.get("run", "")))
                if arrays:
                    res.embeddings, res.predictions = _read_arrays(f)
                return res, str(f.attrs["fingerprint"])
        except (OSError, KeyError, ValueError):
            return None


def _write_rows_and_arrays(f: h5py.File, clips: list[dict[str, Any]], errors: list[dict[str, Any]],
                           embeddings: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> None:
    f.attrs["clips"] = json.dumps(clips, default=_json_default)
    f.attrs["errors"] = json.dumps(errors, default=_json_default)
    for kind, arr in embeddings.items():
        f.create_dataset(f"embeddings/{kind}", data=np.asarray(arr, np.float32))
    for task, arr in predictions.items():
        f.create_dataset(f"predictions/{task}", data=np.asarray(arr, np.float32))


def _read_arrays(f: h5py.File) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return ({kind: f[f"embeddings/{kind}"][()] for kind in f.get("embeddings", {})},
            {task: f[f"predictions/{task}"][()] for task in f.get("predictions", {})})


def _array_shapes(f: h5py.File) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def shaped(ds: h5py.Dataset) -> np.ndarray:
        return np.broadcast_to(np.float32(0), ds.shape)
    return ({kind: shaped(f[f"embeddings/{kind}"]) for kind in f.get("embeddings", {})},
            {task: shaped(f[f"predictions/{task}"]) for task in f.get("predictions", {})})


INT_MISSING = -1  # a missing value of an integer column (the columns are never negative)


def _typed_column(values: list[Any], kind: type) -> np.ndarray:
    """A column of the format's own, with its one type whatever the rows hold: a video that failed
    before its size was known must not turn ``width`` into floats in this file and not in the next."""
    def missing(v) -> bool:
        return v is None or (isinstance(v, float) and np.isnan(v))
    if kind is int:
        return np.array([INT_MISSING if missing(v) else int(v) for v in values], dtype=np.int64)
    if kind is float:
        return np.array([np.nan if missing(v) else float(v) for v in values], dtype=np.float64)
    if kind is bool:
        return np.array([-1 if missing(v) else int(bool(v)) for v in values], dtype=np.int8)
    return np.array(["" if missing(v) else printable(str(v)) for v in values], dtype=object)


def _column(values: list[Any], kind: type | str | None = None) -> np.ndarray:
    """A list of python values -> an HDF5-friendly column (float64, int64, int8 for bools, or UTF-8):
    of ``kind`` for the format's own columns, else as the values are (extra columns; a str kind is
    what _Inferred found in them, when a column is written in slices)."""
    if isinstance(kind, type):
        return _typed_column(values, kind)
    inferred = kind or _Inferred().add(values).kind(len(values))
    if inferred == "bool":
        return np.array([int(bool(v)) if v is not None else -1 for v in values], dtype=np.int8)
    if inferred == "int":
        return np.array(values, dtype=np.int64)
    if inferred == "float":
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array(["" if v is None else printable(str(v)) for v in values], dtype=object)


def _dtype(kind: type | str) -> np.dtype:
    dtype = _column([], kind).dtype
    return STR if dtype == object else dtype


class _Inferred:
    """The kind of an extra column from all its values, gathered batch by batch so that a table
    written in slices types a column as one written whole would be."""

    def __init__(self):
        self.n_present, self.bools, self.ints, self.numbers = 0, True, True, True

    def add(self, values) -> _Inferred:
        for v in values:
            if v is not None:
                self.note(v)
        return self

    def note(self, v: Any) -> None:
        """One value that is not None."""
        self.n_present += 1
        self.bools = self.bools and isinstance(v, (bool, np.bool_))
        numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        self.ints = self.ints and numeric and isinstance(v, (int, np.integer))
        self.numbers = self.numbers and numeric

    def kind(self, n_rows: int) -> str:
        if self.n_present and self.bools:
            return "bool"
        if self.n_present and self.ints and self.n_present == n_rows:
            return "int"
        return "float" if self.n_present and self.numbers else "str"


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file name that is not (bytes decoded with surrogate escapes, e.g.
    Latin-1 names from an old file server) keeps its odd bytes as ``\\xe9``, so it can be stored."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _write_table(group: h5py.Group, rows: list[dict[str, Any]], columns: list[str]) -> None:
    _write_table_in_slices(group, lambda: iter([rows]), columns, len(rows))


def _write_table_in_slices(group: h5py.Group, batches: Callable[[], Iterator[list[dict[str, Any]]]],
                           columns: list[str], n_rows: int) -> None:
    """A table from its rows in batches (``batches()`` gives them again for each pass), never all
    held: a first pass types the extra columns from all their values, a second writes slices."""
    group.attrs["columns"] = json.dumps(columns)
    group.attrs["n_rows"] = n_rows
    extra = {col: _Inferred() for col in columns if col not in COLUMN_TYPES}
    if extra:
        for rows in batches():
            for r in rows:
                for col, value in r.items():
                    if value is not None and col in extra:
                        extra[col].note(value)
    kinds = {col: COLUMN_TYPES.get(col) or extra[col].kind(n_rows) for col in columns}
    datasets = {col: group.create_dataset(col, shape=(n_rows,), dtype=_dtype(kinds[col])) for col in columns}
    with_missing, start = set(), 0
    for rows in batches():
        for col in columns:
            data = _column([r.get(col) for r in rows], kinds[col])
            if kinds[col] is int and (data == INT_MISSING).any():
                with_missing.add(col)
            if len(data):
                datasets[col][start:start + len(data)] = data
        start += len(rows)
    group.attrs["int_missing"] = json.dumps([c for c in columns if c in with_missing])  # read back as pandas' nullable Int64


def _columns(rows: list[dict[str, Any]], first: list[str]) -> list[str]:
    cols = list(first)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


VIDEO_COLUMNS = ["video_id", "path", "source_path", "status", "error", "n_clips", "size_bytes", "mtime",
                 "duration_s", "decoded_duration_s", "fps", "width", "height", "rotation", "has_audio",
                 "audio_duration_s", "audio_gap_s", "decode_errors", "video_stream", "audio_stream"]
CLIP_COLUMNS = ["video_id", "path", "clip_index", "start_s", "end_s", "window_s", "coverage", "n_frames",
                "n_frames_padded", "has_audio", "coverage_audio", "qc_flags"]
ERROR_COLUMNS = ["video_id", "path", "stage", "message"]
# The types of the format's own columns (docs/format.md), kept whatever a file's rows hold
COLUMN_TYPES: dict[str, type] = {
    **dict.fromkeys(["video_id", "path", "source_path", "status", "error", "stage", "message", "qc_flags"], str),
    **dict.fromkeys(["n_clips", "size_bytes", "width", "height", "rotation", "decode_errors", "video_stream",
                     "audio_stream", "clip_index", "n_frames", "n_frames_padded"], int),
    **dict.fromkeys(["mtime", "duration_s", "decoded_duration_s", "fps", "audio_duration_s", "audio_gap_s",
                     "start_s", "end_s", "window_s", "coverage", "coverage_audio"], float),
    "has_audio": bool}


class Assembled(Protocol):
    """A video's share of the output: a VideoResult held whole or a JournalledVideo read back."""

    video: dict[str, Any]
    errors: list[dict[str, Any]]

    def load(self, arrays: bool = True) -> VideoResult: ...


def assemble_output(results: list[Assembled], output: str | Path, attrs: dict[str, Any],
                    embedding_dim: int, prediction_labels: dict[str, dict[str, Any]],
                    run_errors: list[dict[str, Any]] = ()) -> Path:
    """Write the final HDF5 (atomically, on disk before it takes the name) from per-video
    results in input order, one video at a time: a first pass reads the clips' columns and the
    arrays' shapes, a second fills datasets made at their final size, so that peak memory is one
    video's, not the corpus's. ``run_errors``: rows of no video (an input folder that could not be
    read), first in the errors table."""
    output = Path(output)
    videos = [r.video for r in results]
    errors = list(run_errors) + [e for r in results for e in r.errors]
    clip_columns, shapes = list(CLIP_COLUMNS), []
    for r in results:  # first pass: no arrays read
        res = r.load(arrays=False)
        clip_columns = _columns(res.clips, clip_columns)
        shapes.append({**{("embeddings", k): a.shape for k, a in res.embeddings.items()},
                       **{("predictions", t): a.shape for t, a in res.predictions.items()}, "n": len(res.clips)})
    n_clips = sum(s["n"] for s in shapes)
    with atomic_path(output, fsync=True) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else \
                    printable(value) if isinstance(value, str) else value
            f.attrs["n_videos"], f.attrs["n_clips"], f.attrs["n_errors"] = len(videos), n_clips, len(errors)
            f.attrs["embedding_dim"] = embedding_dim
            _write_table(f.create_group("videos"), videos, _columns(videos, VIDEO_COLUMNS))
            _write_table_in_slices(f.create_group("clips"), lambda: (r.load(arrays=False).clips for r in results),
                                   clip_columns, n_clips)
            _write_table(f.create_group("errors"), errors, ERROR_COLUMNS)
            emb = f.create_group("embeddings")
            arrays = {("embeddings", kind): _array_dataset(emb, kind, shapes, ("embeddings", kind), embedding_dim,
                                                           chunked=True) for kind in EMBEDDING_KINDS}
            pred = f.create_group("predictions", track_order=True)  # the --tasks order, not alphabetical
            for task, meta in prediction_labels.items():
                ds = arrays["predictions", task] = _array_dataset(pred, task, shapes, ("predictions", task),
                                                                  len(meta["label_names"]), chunked=False)
                ds.attrs["label_names"] = np.array(meta["label_names"], dtype=object).astype(STR)
                ds.attrs["task"] = meta["task"]
                ds.attrs["values"] = meta["values"]
            _fill_arrays(arrays, results, shapes)
    return output


def _array_dataset(group: h5py.Group, name: str, shapes: list[dict], key: tuple[str, str], width: int,
                   chunked: bool) -> h5py.Dataset:
    """An embeddings or predictions dataset at its final shape: the rows of the videos with clips
    that have this array, in order (an empty one is as wide as the format says)."""
    held = [s[key] for s in shapes if key in s and s["n"]]
    n_rows = sum(shape[0] for shape in held)
    width = held[0][1] if held else width
    return group.create_dataset(name, shape=(n_rows, width), dtype=np.float32,
                                chunks=True if chunked and n_rows else None)


def _fill_arrays(arrays: dict[tuple[str, str], h5py.Dataset], results: list[Assembled], shapes: list[dict]) -> None:
    """Second pass: each video's arrays read from its part and written at their rows."""
    starts = dict.fromkeys(arrays, 0)
    for r, shape in zip(results, shapes):
        if not shape["n"] or not any(key in shape for key in arrays):
            continue
        res = r.load()
        for (group, name), ds in arrays.items():
            arr = getattr(res, group).get(name)
            if arr is not None:
                ds[starts[group, name]:starts[group, name] + len(arr)] = np.asarray(arr, np.float32)
                starts[group, name] += len(arr)


# ---------------------------------------------------------------- readers
def check_features_file(path: str | Path) -> None:
    """Raise a one-line UsageError unless ``path`` is a features file written by socialfeat."""
    path = Path(path)
    hint = f"; the HDF5 kept beside a CSV output is {path.name}.h5" if path.suffix.lower() == ".csv" else ""
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise UsageError(f"{path}: not an HDF5 file{hint}")
    if not is_features_file(path):
        raise UsageError(f"{path}: an HDF5 file, but not one written by socialfeat extract or merge")


def read_table(group: h5py.Group, rows: slice | np.ndarray | None = None) -> pd.DataFrame:
    """A table group of the format (one dataset per column, order in attrs['columns']); ``rows``:
    those rows only (a slice, or increasing row numbers)."""
    import pandas as pd

    cols = json.loads(group.attrs["columns"])
    int_missing = set(json.loads(group.attrs.get("int_missing", "[]")))
    data = {}
    for c in cols:
        arr = group[c][()] if rows is None else group[c][rows]
        if c in int_missing:
            arr = pd.array([None if x == INT_MISSING else int(x) for x in arr], dtype="Int64")
        elif arr.dtype.kind in ("O", "S"):
            arr = np.array([x.decode("utf-8") if isinstance(x, bytes) else x for x in arr], dtype=object)
        elif arr.dtype == np.int8:
            arr = arr.astype(bool) if not (arr < 0).any() else pd.array(
                [None if x < 0 else bool(x) for x in arr], dtype="boolean")
        data[c] = arr
    return pd.DataFrame(data, columns=cols)


def load_videos(path: str | Path) -> pd.DataFrame:
    """The videos table (one row per input file, status and error included)."""
    check_features_file(path)
    with h5py.File(path, "r") as f:
        return read_table(f["videos"])


def load_errors(path: str | Path) -> pd.DataFrame:
    """The errors table: one row per problem (file, stage, one-line cause)."""
    check_features_file(path)
    with h5py.File(path, "r") as f:
        return read_table(f["errors"])


def requested_kinds(embeddings: str | list[str] | tuple[str, ...] | None, computed: tuple[str, ...]) -> list[str]:
    """The embedding kinds asked for, in the file's order, each once: None; 'all' (what the run
    computed); a kind, a comma-separated string or a list of kinds (any letter case), as extract takes them."""
    if embeddings is None:
        return []
    if not isinstance(embeddings, (str, list, tuple)):
        raise UsageError(f"embeddings must be 'all', None or some of {', '.join(EMBEDDING_KINDS)}, "
                         f"got {embeddings!r}")
    names = embeddings.split(",") if isinstance(embeddings, str) else [str(n) for n in embeddings]
    names = [n.strip().lower() for n in names if n.strip()]
    if names == ["all"]:
        return list(computed)
    bad = sorted(set(names) - set(EMBEDDING_KINDS))
    if bad or not names:
        raise UsageError(f"unknown embedding kind(s) {bad}; choose 'all' or from {', '.join(EMBEDDING_KINDS)}")
    return [k for k in EMBEDDING_KINDS if k in names]


def load_features(path: str | Path, embeddings: str | list[str] | None = "joint",
                  predictions: bool = True) -> pd.DataFrame:
    """One DataFrame: clip metadata, video facts, prediction columns
    (``<task>_<label>``) and embedding columns (``<kind>_000`` ...).

    embeddings: 'joint', 'audio', 'visual', a list of them, 'all' (those the run computed),
    or None. Asking for a kind the run did not compute (``extract --embeddings``) is an error.
    """
    import pandas as pd

    check_features_file(path)
    computed = computed_embeddings(path)
    kinds = requested_kinds(embeddings, computed)
    absent = [k for k in kinds if k not in computed]
    if absent:
        raise ValueError(f"{path}: the run computed only the {', '.join(computed)} embedding(s) "
                         f"(extract --embeddings), not {', '.join(absent)}")
    with h5py.File(path, "r") as f:
        clips = read_table(f["clips"])
        videos = read_table(f["videos"])
        frames = [clips]
        if predictions:
            for task, ds in f["predictions"].items():
                labels = [x.decode() if isinstance(x, bytes) else x for x in ds.attrs["label_names"]]
                frames.append(pd.DataFrame(ds[()], columns=[f"{task}_{lab}" for lab in labels]))
        for kind in kinds:
            arr = f["embeddings"][kind][()]
            frames.append(pd.DataFrame(arr, columns=[f"{kind}_{i:03d}" for i in range(arr.shape[1])]))
    df = pd.concat(frames, axis=1)
    vcols = ["video_id", "duration_s", "fps", "width", "height", "status"]
    facts = videos[vcols].rename(columns={"duration_s": "video_duration_s", "status": "video_status"})
    return df.merge(facts, on="video_id", how="left", sort=False)


def computed_embeddings(path: str | Path) -> tuple[str, ...]:
    """The embedding kinds a run computed (all of them unless it was limited with
    ``extract --embeddings``; the others are stored as NaN)."""
    settings = json.loads(read_attrs(path).get("settings") or "{}")
    return tuple(k for k in EMBEDDING_KINDS if k in settings.get("embeddings", EMBEDDING_KINDS))


def is_features_file(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file that socialfeat wrote (extract or merge)."""
    try:
        with h5py.File(path, "r") as f:
            return "socialfeat_version" in f.attrs and all(g in f for g in ("videos", "clips", "errors"))
    except (OSError, ValueError):
        return False


def prediction_tasks(path: str | Path) -> list[str]:
    """Names of the tasks with predictions in the file (column prefixes in load_features)."""
    with h5py.File(path, "r") as f:
        return list(f["predictions"])


def differing_keys(a: Any, b: Any) -> list[str]:
    """The keys in which two recorded JSON objects differ (absent differs from null), sorted; empty
    when either is not an object. What a rerun (extract.run_changes) and a merge (merge._difference)
    name when the settings of two runs differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return []
    return sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...))


def read_attrs(path: str | Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
