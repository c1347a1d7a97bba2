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
    load_errors,
    load_features,
    load_videos,
    prediction_tasks,
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


def _timeline(video: pd.DataFrame, pred_cols: list[str], fallback: np.ndarray | None, title: str) -> str:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 2.4))
    mid = (video["start_s"] + video["end_s"]) / 2
    if pred_cols:
        lines = [ax.plot(mid, video[col], marker="o", ms=3)[0] for col in pred_cols]
        ax.legend(lines, pred_cols, fontsize=7, ncol=min(4, len(pred_cols)), loc="upper right")
        ax.set_ylabel("prediction")
    else:
        ax.plot(mid, fallback, marker="o", ms=3)
        ax.set_ylabel("joint PC1")
    flagged = video["qc_flags"].fillna("") != ""
    for s, e in zip(video["start_s"][flagged], video["end_s"][flagged]):
        ax.axvspan(s, e, color="orange", alpha=0.2, lw=0)
    ax.set_xlabel("time (s); shaded: clips with QC flags")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def build_report(h5_path: str | Path, output: str | Path) -> Path:
    """Write the report of ``h5_path`` to ``output`` (which may only replace a report)."""
    import matplotlib
    matplotlib.use("Agg")

    refuse_foreign_output(output, is_socialfeat_report, "a report socialfeat wrote")
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        page = _page(h5_path)
    output = Path(output)
    with atomic_path(output) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return output


def _page(h5_path: str | Path) -> str:
    import matplotlib.pyplot as plt

    attrs = read_attrs(h5_path)
    videos, errors = load_videos(h5_path), load_errors(h5_path)
    clips = load_features(h5_path, embeddings="joint")
    emb_cols = [c for c in clips.columns if c.startswith("joint_")]
    tasks = prediction_tasks(h5_path)
    pred_cols = [c for c in clips.columns if any(c.startswith(t + "_") for t in tasks)]
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
        ax.set_title("joint embeddings of all clips (PCA), coloured by video", fontsize=9)
        overview = f'<img alt="embedding overview" src="{_png(fig)}">'
    else:
        overview = "<p>Too few clips with a joint embedding for an overview.</p>"

    timelines = []
    for path, video in list(clips.groupby("path", sort=False))[:MAX_TIMELINES]:
        title = f"{path} ({len(video)} clips)"
        img = _timeline(video, pred_cols, pcs[video.index, 0], title)
        timelines.append(f'<h3>{html.escape(str(path))}</h3><img alt="timeline {html.escape(str(path))}" src="{img}">')
    more = len(videos) - len(timelines)
    provenance = pd.DataFrame({"field": ["file", "socialfeat", "model", "weights sha256", "settings", "run",
                                         "videos / clips / errors"],
                               "value": [str(h5_path), attrs.get("socialfeat_version"), attrs.get("model_name"),
                                         attrs.get("weights_sha256"), attrs.get("settings"),
                                         f"{attrs.get('started_at')} -> {attrs.get('finished_at')}",
                                         f"{attrs.get('n_videos')} / {attrs.get('n_clips')} / {attrs.get('n_errors')}"]})
    qc = clips.assign(flag=clips["qc_flags"].fillna("").str.split(";")).explode("flag")
    qc = qc[qc["flag"] != ""].groupby(["path", "flag"]).size().unstack(fill_value=0)
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
    return page
