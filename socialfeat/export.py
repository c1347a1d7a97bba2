"""CSV exports and text summaries of a features file (for SPSS/Excel users and the CLI)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from socialfeat.atomic import atomic_path
from socialfeat.errors import one_line
from socialfeat.store import load_errors, load_features, load_videos, read_attrs


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def export_csv(h5_path: str | Path, out_dir: str | Path, embeddings: bool = False) -> list[Path]:
    """videos.csv, clips.csv (with predictions, and embeddings if asked) and errors.csv."""
    out_dir = Path(out_dir)
    tables = {"videos.csv": load_videos(h5_path), "errors.csv": load_errors(h5_path),
              "clips.csv": load_features(h5_path, embeddings="all" if embeddings else None)}
    paths = []
    for name, df in tables.items():
        _atomic_csv(df, out_dir / name)
        paths.append(out_dir / name)
    return paths


def h5_to_flat_csv(h5_path: str | Path, csv_path: str | Path) -> Path:
    """One flat CSV: clips, predictions and all three embeddings as wide columns."""
    _atomic_csv(load_features(h5_path, embeddings="all"), Path(csv_path))
    return Path(csv_path)


def describe(h5_path: str | Path) -> str:
    attrs = read_attrs(h5_path)
    videos = load_videos(h5_path)
    errors = load_errors(h5_path)
    lines = [f"file:        {h5_path}",
             f"socialfeat:  {attrs.get('socialfeat_version')}",
             f"model:       {attrs.get('model_name')} ({attrs.get('model_class')}), "
             f"sha256 {str(attrs.get('weights_sha256'))[:12]}",
             f"settings:    {attrs.get('settings')}",
             *([f"shard:       {attrs['shard']} (one part of a split: combine all with socialfeat merge)"]
               if attrs.get("shard") else []),
             f"run:         {attrs.get('started_at')} -> {attrs.get('finished_at')}",
             f"videos:      {attrs.get('n_videos')}  clips: {attrs.get('n_clips')}  "
             f"embedding dim: {attrs.get('embedding_dim')}",
             "status:      " + ", ".join(f"{k}={v}" for k, v in videos["status"].value_counts().items())]
    if len(errors):
        lines.append(f"errors and warnings ({len(errors)}):")  # (the errors table holds both: format.md)
        lines += [f"  {one_line(r.path)}: {r.stage}: {one_line(r.message)}" for r in errors.itertuples()]
    return "\n".join(lines)

