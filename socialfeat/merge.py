"""``socialfeat merge``: combine the outputs of sharded runs (e.g. a SLURM job array) into
one file, identical to what a single run over all videos writes.

Shards must come from the same model weights, preprocessing and settings; any
difference is refused with the attribute (and, in the settings, the keys) that differ.
Shard files must be the complete set 1..N of one split (their ``shard`` attributes),
made from the same inputs (their ``inputs`` attributes): a missing or repeated shard,
or one that found other videos, is refused, naming it, so that a merge never silently
drops or doubles videos. The output is claimed before any file is read (outputs.claim_output)
and may not be one of the shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from socialfeat.errors import OutputExistsError, SocialfeatError
from socialfeat.outputs import claim_output, refuse_foreign_output
from socialfeat.store import (
    VideoResult,
    assemble_output,
    differing_keys,
    is_features_file,
    read_attrs,
    read_table,
)

MUST_MATCH = ("socialfeat_version", "model_name", "model_class", "weights_sha256", "model_config", "preprocess",
              "settings", "embedding_dim")


class MergeError(SocialfeatError, ValueError):
    """Shards that were not made with the same model and settings."""


def _rows(df: pd.DataFrame) -> list[dict]:
    def py(v):
        if v is pd.NA or v is None:
            return None
        if isinstance(v, np.generic):
            return v.item()
        return v
    return [{k: py(v) for k, v in row.items()} for row in df.to_dict("records")]


@dataclass
class ShardVideo:
    """A video of a shard as merge holds it: its videos and errors rows, and where its clips lie in
    the shard, read back one video at a time when the merged file is written (store.assemble_output),
    so that merging shards does not hold the corpus's embeddings."""

    video: dict[str, Any]
    errors: list[dict[str, Any]]
    path: Path
    rows: np.ndarray  # its clips' row numbers in the shard, increasing

    def load(self, arrays: bool = True) -> VideoResult:
        res = VideoResult(video=self.video, errors=self.errors)
        if not len(self.rows):
            return res
        lo, hi = int(self.rows[0]), int(self.rows[-1]) + 1
        rows = slice(lo, hi) if hi - lo == len(self.rows) else self.rows  # (a shard writes them together)
        with h5py.File(self.path, "r") as f:
            res.clips = _rows(read_table(f["clips"], rows))
            for group, into in (("embeddings", res.embeddings), ("predictions", res.predictions)):
                for name, ds in f[group].items():
                    into[name] = ds[rows] if arrays else np.broadcast_to(np.float32(0), (len(self.rows), ds.shape[1]))
        return res


def read_results(path: str | Path) -> tuple[list[ShardVideo], dict, list[dict[str, Any]]]:
    """A features file's videos (the journal's unit, clips and arrays left in the file until they are
    written), its prediction metadata, and its error rows of no video (folders it could not read)."""
    with h5py.File(path, "r") as f:
        videos, errors = (_rows(read_table(f[g])) for g in ("videos", "errors"))
        clip_videos = [x.decode() if isinstance(x, bytes) else str(x) for x in f["clips"]["video_id"][()]]
        meta = {t: {"label_names": [x.decode() if isinstance(x, bytes) else str(x) for x in ds.attrs["label_names"]],
                    "task": str(ds.attrs["task"]), "values": str(ds.attrs["values"])}
                for t, ds in f["predictions"].items()}
    by_video: dict[str, list[int]] = {}
    for i, video_id in enumerate(clip_videos):
        by_video.setdefault(video_id, []).append(i)
    errors_of: dict[str, list[dict]] = {}
    for e in errors:
        errors_of.setdefault(e["video_id"], []).append(e)
    return [ShardVideo(v, errors_of.get(v["video_id"], []), Path(path), np.array(by_video.get(v["video_id"], []),
                                                                                  dtype=np.int64))
            for v in videos], meta, errors_of.get("", [])


def check_shards(parts: list[str | Path], attrs: list[dict]) -> None:
    """The ``shard`` attributes (``I/N``) of the files: one split, every shard once. Files
    from unsharded runs (no attribute) may be merged with each other only."""
    shards = [str(a.get("shard") or "") for a in attrs]
    if not any(shards):
        return
    if not all(shards):
        plain = next(p for p, s in zip(parts, shards) if not s)
        raise MergeError(f"{plain} is not a shard (no --shard I/N) but other files are")
    split = {int(s.split("/")[1]) for s in shards}
    if len(split) > 1:
        raise MergeError(f"the files come from different splits: {', '.join(sorted(set(shards)))}")
    (n,) = split
    seen: dict[int, str] = {}
    for p, s in zip(parts, shards):
        i = int(s.split("/")[0])
        if i in seen:
            raise MergeError(f"shard {s} given twice: {seen[i]} and {p}")
        seen[i] = str(p)
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in seen]
    if missing:
        raise MergeError(f"shard(s) {', '.join(missing)} missing: got {len(seen)} of {n} "
                         f"({', '.join(f'{i}/{n}' for i in sorted(seen))})")


def check_inputs(parts: list[str | Path], attrs: list[dict]) -> None:
    """Every shard found the same videos (the digest of their relative paths, before the split):
    shards run on other folders, or before files were added, would double some videos and drop
    others. Files from before socialfeat recorded its inputs are not compared."""
    found = [json.loads(a["inputs"]) if a.get("inputs") else None for a in attrs]
    if None in found:
        return
    for p, f in zip(parts[1:], found[1:]):
        if f["sha256"] != found[0]["sha256"]:
            raise MergeError(f"the shards were made from different inputs: {_found_text(parts[0], found[0])}, "
                             f"{_found_text(p, f)}; run every shard on the same inputs (a shard run again "
                             "resumes from its journal)")


def _found_text(path: str | Path, found: dict[str, Any]) -> str:
    return f"{path} found {found['n_videos']} videos in {', '.join(found['roots'])}"


def check_same(parts: list[str | Path], attrs: list[dict]) -> None:
    """The MUST_MATCH attributes are the same in every file; else MergeError naming the attribute,
    the keys that differ (JSON objects: settings, preprocess, model_config) and their values."""
    for key in MUST_MATCH:
        first = attrs[0].get(key)
        other = next((i for i, a in enumerate(attrs) if str(a.get(key)) != str(first)), None)
        if other is not None:
            raise MergeError(f"shards differ in {key}: "
                             + _difference(_parsed(first), _parsed(attrs[other].get(key)), parts[0], parts[other]))


def _parsed(value: Any) -> Any:
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _difference(a: Any, b: Any, pa: str | Path, pb: str | Path) -> str:
    """'KEY: A in PA, B in PB' for each key in which two JSON objects differ; 'A in PA, B in PB' otherwise."""
    keys = differing_keys(a, b)
    if not keys:
        return f"{_shown(a)} in {pa}, {_shown(b)} in {pb}"
    return "; ".join(f"{k}: {_shown(a.get(k, ...))} in {pa}, {_shown(b.get(k, ...))} in {pb}" for k in keys)


def _shown(value: Any) -> str:
    return "(absent)" if value is ... else json.dumps(value, ensure_ascii=False, default=str)[:200]


def refuse_input_as_output(parts: list[str | Path], output: Path) -> None:
    """``-o`` naming one of the shards would replace it: refused."""
    for p in parts:
        if output.exists() and os.path.samefile(p, output):
            raise OutputExistsError(f"{output} is one of the files to merge ({p}); give the merged file "
                                    "another name")


def merge(parts: list[str | Path], output: str | Path, command_line: str = "") -> Path:
    """Merge the features files ``parts`` into ``output`` (which may only replace a features file,
    and not one of ``parts``)."""
    if not parts:
        raise MergeError("nothing to merge")
    output = Path(output)
    refuse_input_as_output(parts, output)
    refuse_foreign_output(output, is_features_file, "a socialfeat features file")
    with claim_output(output):  # before reading: a folder that takes no files fails at once
        return _merge(parts, output, command_line)


def _merge(parts: list[str | Path], output: Path, command_line: str) -> Path:
    attrs = [read_attrs(p) for p in parts]
    check_shards(parts, attrs)
    check_same(parts, attrs)
    check_inputs(parts, attrs)
    results, metas, seen, run_errors = [], [], {}, []
    for p in parts:
        res, meta, no_video = read_results(p)
        run_errors += [e for e in no_video if e not in run_errors]  # (every shard walks every folder)
        for r in res:
            if r.video["video_id"] in seen:
                raise MergeError(f"video {r.video['path']} is in both {seen[r.video['video_id']]} and {p}")
            seen[r.video["video_id"]] = str(p)
        results += res
        metas.append(meta)
    if any(m != metas[0] for m in metas):
        raise MergeError("shards differ in their task predictions (names, labels or types)")
    results.sort(key=lambda r: (r.video["path"], r.video["source_path"]))
    first = attrs[0]
    out_attrs = {k: v for k, v in first.items() if k not in ("n_videos", "n_clips", "n_errors", "embedding_dim")}
    out_attrs.update(command_line=command_line or out_attrs.get("command_line", ""), shard="",
                     started_at=min(a["started_at"] for a in attrs), finished_at=max(a["finished_at"] for a in attrs),
                     merged_from=json.dumps([str(p) for p in parts]))
    return assemble_output(results, output, out_attrs, int(first["embedding_dim"]), metas[0], run_errors)
