"""``socialfeat report``: a self-contained HTML page about one features file.

Provenance, the videos with their status and QC flags, the error table, per-video
timelines of the task predictions (or of the first principal component of the joint
embedding when there are none), and a 2-D PCA overview of all clip embeddings.
Plots are PNG images embedded as data URIs: the page is a single file to send around.
File names are text everywhere: escaped in the HTML, and never read as mathematics by
matplotlib (a name with ``$`` in it would otherwise crash the report).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from socialfeat.atomic import atomic_path
from socialfeat.outputs import (
    REPORT_MARKER,
    is_socialfeat_report,
    refuse_foreign_output,
)
from socialfeat.store import (
    computed_embeddings,
    load_errors,
    load_features,
    load_videos,
    read_attrs,
)

MAX_TIMELINES = 24  # videos drawn individually; the tables list all of them


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of x (N, D)."""
    centred = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, border=0, classes="t", na_rep="")


@dataclass
class Quantity:
    """One plotted quantity per video timeline: its columns, labels, and one y-range for all videos."""

    columns: list[str]
    labels: list[str]
    ylabel: str
    ylim: tuple[float, float]


def timeline_quantity(clips: pd.DataFrame, tasks: dict[str, tuple[str, list[str]]], pc1: np.ndarray,
                      kind: str = "joint") -> Quantity:
    """Task predictions (a two-class task as one line: the second class's probability), or the
    first principal component of the ``kind`` embeddings; y-range shared by every video."""
    cols, labels = [], []
    for task, (kind, names) in tasks.items():
        shown = names[1:] if kind == "classification" and len(names) == 2 else names
        cols += [f"{task}_{n}" for n in shown]
        labels += [f"P({n})" if kind in ("classification", "multilabel") else f"{task}: {n}" for n in shown]
    if not cols:
        finite = pc1[np.isfinite(pc1)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (-1.0, 1.0)
        pad = 0.05 * (hi - lo or 1.0)
        return Quantity([f"{kind}_pc1"], [f"{kind} PC1"], f"{kind} embedding, 1st principal\ncomponent (all clips)",
                        (lo - pad, hi + pad))
    values = clips[cols].to_numpy(np.float64)
    probabilities = all(kind in ("classification", "multilabel") for kind, _ in tasks.values())
    lo, hi = (0.0, 1.0) if probabilities or not np.isfinite(values).any() else \
        (np.nanmin(values), np.nanmax(values))
    pad = 0.05 * (hi - lo or 1.0)
    return Quantity(cols, labels, "probability" if probabilities else "prediction", (lo - pad, hi + pad))


def _with_gaps(video: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Clips in time order, with an empty row wherever clips do not touch, so lines break there
    (as they do at a clip without a value, e.g. no audio)."""
    video = video.sort_values("start_s")
    rows = []
    prev_end = None
    for _, row in video.iterrows():
        if prev_end is not None and row["start_s"] > prev_end + 1e-3:
            rows.append({"mid": (prev_end + row["start_s"]) / 2, **{c: np.nan for c in columns}})
        rows.append({"mid": (row["start_s"] + row["end_s"]) / 2, **{c: row[c] for c in columns}})
        prev_end = row["end_s"]
    return pd.DataFrame(rows)


def _timeline(video: pd.DataFrame, quantity: Quantity, title: str) -> str:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 2.4))
    points = _with_gaps(video, quantity.columns)
    for col, label in zip(quantity.columns, quantity.labels):
        ax.plot(points["mid"], points[col], marker="o", ms=3, label=label)
    if not quantity.columns[0].endswith("_pc1"):
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # outside the data
    ax.set_ylim(*quantity.ylim)
    ax.set_ylabel(quantity.ylabel, fontsize=8)
    flagged = video["qc_flags"].fillna("") != ""
    for s, e in zip(video["start_s"][flagged], video["end_s"][flagged]):
        ax.axvspan(s, e, color="orange", alpha=0.2, lw=0)
    ax.set_xlabel("time (s); shaded: clips with QC flags; gaps: no clip or no value")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def _task_kinds(h5_path: str | Path) -> dict[str, tuple[str, list[str]]]:
    """task -> (kind, label names), from the prediction datasets' attributes."""
    import h5py

    def text(x):
        return x.decode() if isinstance(x, bytes) else str(x)

    with h5py.File(h5_path, "r") as f:
        return {t: (text(ds.attrs.get("task", "")), [text(x) for x in ds.attrs["label_names"]])
                for t, ds in f["predictions"].items()}


def build_report(h5_path: str | Path, output: str | Path) -> Path:
    """Write the HTML report of a features file to ``output``, which may only replace a report
    (never the features file, a video or a notes file)."""
    refuse_foreign_output(output, is_socialfeat_report, "a report socialfeat wrote")
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False  # file names with $ are text, not mathematics
    import matplotlib.pyplot as plt

    attrs = read_attrs(h5_path)
    videos, errors = load_videos(h5_path), load_errors(h5_path)
    kinds = computed_embeddings(h5_path)  # (a run limited with --embeddings may lack joint)
    kind = "joint" if "joint" in kinds else kinds[0]
    clips = load_features(h5_path, embeddings=kind)
    emb_cols = [c for c in clips.columns if c.startswith(f"{kind}_")]
    emb = clips[emb_cols].to_numpy(np.float64)
    ok = np.isfinite(emb).all(1)
    pcs = np.full((len(clips), 2), np.nan)
    if ok.sum() >= 3:
        pcs[ok] = pca_2d(emb[ok])

    overview = ""
    if ok.sum() >= 3:
        fig, ax = plt.subplots(figsize=(6, 5))
        groups = clips[ok].groupby("path").groups
        dots = [ax.scatter(pcs[idx, 0], pcs[idx, 1], s=12) for idx in groups.values()]
        if len(groups) <= 12:  # (labels given directly: a name starting with "_" is kept too)
            ax.legend(dots, [str(p) for p in groups], fontsize=7)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.set_title(f"{kind} embeddings of all clips (PCA), coloured by video", fontsize=9)
        overview = f'<img alt="embedding overview" src="{_png(fig)}">'
    else:
        overview = f"<p>Too few clips with a {kind} embedding for an overview.</p>"

    clips[f"{kind}_pc1"] = pcs[:, 0]
    quantity = timeline_quantity(clips, _task_kinds(h5_path), pcs[:, 0], kind)
    timelines = []
    for path, video in list(clips.groupby("path", sort=False))[:MAX_TIMELINES]:
        title = f"{path} ({len(video)} clips)"
        img = _timeline(video, quantity, title)
        timelines.append(f'<h3>{html.escape(str(path))}</h3><img alt="timeline {html.escape(str(path))}" src="{img}">')
    more = clips["path"].nunique() - len(timelines)  # videos without clips have no timeline
    provenance = pd.DataFrame({"field": ["file", "socialfeat", "model", "weights sha256", "settings", "run",
                                         "videos / clips / errors"],
                               "value": [str(h5_path), attrs.get("socialfeat_version"), attrs.get("model_name"),
                                         attrs.get("weights_sha256"), attrs.get("settings"),
                                         f"{attrs.get('started_at')} -> {attrs.get('finished_at')}",
                                         f"{attrs.get('n_videos')} / {attrs.get('n_clips')} / {attrs.get('n_errors')}"]})
    qc = clips.assign(flag=clips["qc_flags"].fillna("").str.split(";")).explode("flag")
    qc = qc[qc["flag"] != ""].groupby(["path", "flag"]).size().unstack(fill_value=0)
    qc.columns.name = None  # else the pivot's axis name becomes a stray header cell
    vcols = ["path", "status", "error", "n_clips", "duration_s", "decoded_duration_s", "has_audio", "fps",
             "width", "height"]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{REPORT_MARKER}
<title>socialfeat report: {html.escape(Path(h5_path).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table.t{{border-collapse:collapse;font-size:12px}}
table.t td,table.t th{{border:1px solid #ccc;padding:2px 6px}} img{{max-width:100%}}</style></head><body>
<h1>socialfeat report</h1>
<h2>Provenance</h2>{_table(provenance)}
<h2>Videos</h2>{_table(videos[[c for c in vcols if c in videos.columns]])}
<h2>QC flags (clips per flag)</h2>{_table(qc.reset_index()) if len(qc) else "<p>No clip carries a QC flag.</p>"}
<h2>Errors</h2>{_table(errors) if len(errors) else "<p>No errors.</p>"}
<h2>Embedding overview</h2>{overview}
<h2>Timelines</h2>{"".join(timelines)}{f"<p>{more} more videos not drawn.</p>" if more > 0 else ""}
</body></html>"""
    output = Path(output)
    with atomic_path(output) as tmp:  # creates the folder; never a half-written page
        Path(tmp).write_text(page, encoding="utf-8")
    return output
