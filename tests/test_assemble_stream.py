"""The output assembled from the journal one video at a time is the file the former assembly,
which held every result whole, wrote: same groups, datasets, dtypes, shapes, chunking and attrs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

import socialfeat.extract as extract_module
import socialfeat.store as store
from socialfeat.atomic import atomic_path
from socialfeat.demo import synthetic_video
from socialfeat.extract import extract
from socialfeat.store import COLUMN_TYPES, EMBEDDING_KINDS, INT_MISSING, STR, printable


# ---- the assembly as it was before it streamed from the journal (copied, to compare against)
def _old_typed_column(values, kind):
    def missing(v):
        return v is None or (isinstance(v, float) and np.isnan(v))
    if kind is int:
        return np.array([INT_MISSING if missing(v) else int(v) for v in values], dtype=np.int64)
    if kind is float:
        return np.array([np.nan if missing(v) else float(v) for v in values], dtype=np.float64)
    if kind is bool:
        return np.array([-1 if missing(v) else int(bool(v)) for v in values], dtype=np.int8)
    return np.array(["" if missing(v) else printable(str(v)) for v in values], dtype=object)


def _old_column(values, kind=None):
    if kind is not None:
        return _old_typed_column(values, kind)
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present):
        return np.array([int(bool(v)) if v is not None else -1 for v in values], dtype=np.int8)
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present) \
            and len(present) == len(values):
        return np.array(values, dtype=np.int64)
    if present and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       for v in present):
        return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array(["" if v is None else printable(str(v)) for v in values], dtype=object)


def _old_write_table(group, rows, columns):
    group.attrs["columns"] = json.dumps(columns)
    group.attrs["n_rows"] = len(rows)
    with_missing = []
    for col in columns:
        kind = COLUMN_TYPES.get(col)
        data = _old_column([r.get(col) for r in rows], kind)
        if kind is int and (data == INT_MISSING).any():
            with_missing.append(col)
        if data.dtype == object:
            group.create_dataset(col, data=data.astype(STR), dtype=STR)
        else:
            group.create_dataset(col, data=data)
    group.attrs["int_missing"] = json.dumps(with_missing)


def old_assemble_output(results, output, attrs, embedding_dim, prediction_labels, run_errors=()):
    videos = [r.video for r in results]
    clips = [c for r in results for c in r.clips]
    errors = list(run_errors) + [e for r in results for e in r.errors]
    with atomic_path(Path(output), fsync=True) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else \
                    printable(value) if isinstance(value, str) else value
            f.attrs["n_videos"], f.attrs["n_clips"], f.attrs["n_errors"] = len(videos), len(clips), len(errors)
            f.attrs["embedding_dim"] = embedding_dim
            _old_write_table(f.create_group("videos"), videos, store._columns(videos, store.VIDEO_COLUMNS))
            _old_write_table(f.create_group("clips"), clips, store._columns(clips, store.CLIP_COLUMNS))
            _old_write_table(f.create_group("errors"), errors, store.ERROR_COLUMNS)
            emb = f.create_group("embeddings")
            for kind in EMBEDDING_KINDS:
                parts = [r.embeddings[kind] for r in results if kind in r.embeddings and len(r.clips)]
                data = np.concatenate(parts) if parts else np.zeros((0, embedding_dim), np.float32)
                emb.create_dataset(kind, data=data.astype(np.float32), chunks=True if len(data) else None)
            pred = f.create_group("predictions", track_order=True)
            for task, meta in prediction_labels.items():
                parts = [r.predictions[task] for r in results if task in r.predictions and len(r.clips)]
                data = np.concatenate(parts) if parts else np.zeros((0, len(meta["label_names"])), np.float32)
                ds = pred.create_dataset(task, data=data.astype(np.float32))
                ds.attrs["label_names"] = np.array(meta["label_names"], dtype=object).astype(STR)
                ds.attrs["task"] = meta["task"]
                ds.attrs["values"] = meta["values"]


# ---- comparison
def _same_attrs(a, b, where):
    assert sorted(a.attrs) == sorted(b.attrs), where
    for k in a.attrs:
        x, y = a.attrs[k], b.attrs[k]
        assert type(x) is type(y), (where, k)
        assert np.array_equal(np.asarray(x), np.asarray(y)) if isinstance(x, np.ndarray) else x == y, (where, k)


def _items(f):
    found = []
    f.visititems(lambda name, obj: found.append(name))
    return found


def assert_same_file(old: Path, new: Path) -> None:
    with h5py.File(old, "r") as a, h5py.File(new, "r") as b:
        _same_attrs(a, b, "/")
        assert _items(a) == _items(b)
        for name in _items(a):
            x, y = a[name], b[name]
            _same_attrs(x, y, name)
            assert type(x) is type(y), name
            if isinstance(x, h5py.Group):
                assert list(x) == list(y), name  # (track_order: the --tasks order)
                continue
            assert (x.dtype, x.shape, x.chunks) == (y.dtype, y.shape, y.chunks), name
            assert h5py.check_string_dtype(x.dtype) == h5py.check_string_dtype(y.dtype), name
            u, v = x[()], y[()]
            if u.dtype.kind == "f":
                assert np.array_equal(u, v, equal_nan=True), name
            else:
                assert (u == v).all(), name


def test_streamed_assembly_writes_the_file_the_old_assembly_wrote(tmp_path, tiny_ft_ckpt, monkeypatch):
    folder = tmp_path / "videos"
    synthetic_video(folder / "a_talk.mp4", 9.0, size="160x120")
    synthetic_video(folder / "b_late.mp4", 2.0, size="160x120")
    (folder / "c_notes.mp4").write_text("a text file named as a video\n")
    synthetic_video(folder / "d_unasked.mp4", 2.0, size="160x120", seed=3)
    segments = tmp_path / "segments.csv"  # its extra columns are carried into the clips table
    segments.write_text("video,start,end,speaker,turn\na_talk.mp4,0,4.5,therapist,1\na_talk.mp4,5,9,client,\n"
                        "b_late.mp4,30,40,x,3\nc_notes.mp4,0,2,y,4\n")
    old = tmp_path / "old.h5"
    real = store.assemble_output

    def both(results, output, *args, **kw):
        loaded = [r.load() for r in results]  # every video whole, as the former run held them
        old_assemble_output(loaded, old, *args, **kw)
        return real(results, output, *args, **kw)

    monkeypatch.setattr(extract_module, "assemble_output", both)
    out = tmp_path / "out.h5"
    summary = extract([folder], out, weights=tiny_ft_ckpt, segments=segments, device="cpu", workers=0,
                      batch_size=2, progress=False)
    with h5py.File(out, "r") as f:
        statuses = [s.decode() for s in f["videos/status"][()]]
        assert f["embeddings/joint"].shape[0] == f.attrs["n_clips"] == summary.n_clips > 0
        assert len(f["predictions"]) == 1 and f["embeddings/joint"].chunks
        assert {"speaker", "turn"} <= set(json.loads(f["clips"].attrs["columns"]))
    assert statuses == ["ok", "no_clips", "error", "skipped"]
    assert summary.statuses == {s: statuses.count(s) for s in statuses}
    assert_same_file(old, out)

    out.unlink()  # a rerun reuses every journalled video without reading their arrays: the same file again
    summary = extract([folder], out, weights=tiny_ft_ckpt, segments=segments, device="cpu", workers=0,
                      batch_size=2, progress=False)
    assert summary.n_reused == 4
    assert_same_file(old, out)


def test_extra_columns_typed_from_all_their_values_when_written_in_slices(tmp_path):
    rows = [[{"a": 1, "b": True, "c": 1, "d": "x"}], [{"a": 2.5, "b": None, "c": None}], [{"e": np.float32(2)}]]
    cols = store._columns([r for batch in rows for r in batch], [])
    with h5py.File(tmp_path / "t.h5", "w") as f:
        store._write_table_in_slices(f.create_group("new"), lambda: iter(rows), cols, 3)
        _old_write_table(f.create_group("old"), [r for batch in rows for r in batch], cols)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        for col in cols:
            assert f["new"][col].dtype == f["old"][col].dtype, col
            u, v = f["new"][col][()], f["old"][col][()]
            assert np.array_equal(u, v, equal_nan=True) if u.dtype.kind == "f" else (u == v).all(), col
        assert f["new"].attrs["int_missing"] == f["old"].attrs["int_missing"]
