"""``socialfeat merge``: combine the outputs of sharded runs (e.g. a SLURM job array) into
one file, identical to what a single run over all videos writes.

Shards must come from the same model weights, preprocessing and settings; any
difference is refused with the attribute that differs. Shard files must be the
complete set 1..N of one split (their ``shard`` attributes): a missing or repeated
shard is refused, naming it, so that a merge never silently drops videos.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from socialfeat.errors import SocialfeatError
from socialfeat.outputs import refuse_foreign_output
from socialfeat.store import (
    EMBEDDING_KINDS,
    VideoResult,
    assemble_output,
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


def read_results(path: str | Path) -> tuple[list[VideoResult], dict]:
    """A features file back as per-video results (the journal's unit) plus its prediction metadata."""
    with h5py.File(path, "r") as f:
        videos, clips, errors = (_rows(read_table(f[g])) for g in ("videos", "clips", "errors"))
        emb = {k: f["embeddings"][k][()] for k in EMBEDDING_KINDS}
        preds = {t: f["predictions"][t][()] for t in f["predictions"]}
        meta = {t: {"label_names": [x.decode() if isinstance(x, bytes) else str(x) for x in ds.attrs["label_names"]],
                    "task": str(ds.attrs["task"]), "values": str(ds.attrs["values"])}
                for t, ds in f["predictions"].items()}
    by_video: dict[str, list[int]] = {}
    for i, c in enumerate(clips):
        by_video.setdefault(c["video_id"], []).append(i)
    results = []
    for v in videos:
        idx = by_video.get(v["video_id"], [])
        res = VideoResult(video=v, clips=[clips[i] for i in idx],
                          errors=[e for e in errors if e["video_id"] == v["video_id"]])
        if idx:
            res.embeddings = {k: a[idx] for k, a in emb.items()}
            res.predictions = {t: a[idx] for t, a in preds.items()}
        results.append(res)
    return results, meta


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


def merge(parts: list[str | Path], output: str | Path, command_line: str = "") -> Path:
    """Merge the features files ``parts`` into ``output`` (which may only replace a features file)."""
    if not parts:
        raise MergeError("nothing to merge")
    refuse_foreign_output(output, is_features_file, "a socialfeat features file")
    attrs = [read_attrs(p) for p in parts]
    check_shards(parts, attrs)
    for key in MUST_MATCH:
        values = {str(a.get(key)) for a in attrs}
        if len(values) > 1:
            raise MergeError(f"shards differ in {key}: {parts[0]} has {str(attrs[0].get(key))[:120]!r}, "
                             f"others {sorted(values - {str(attrs[0].get(key))})[0][:120]!r}")
    results, metas, seen = [], [], {}
    for p in parts:
        res, meta = read_results(p)
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
    return assemble_output(results, output, out_attrs, int(first["embedding_dim"]), metas[0])
