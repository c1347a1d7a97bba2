"""``socialfeat finetune``: fit task heads on the user's own labels.

Labels are a CSV of segments (video, start, end, then either one label column for
classification or numeric trait columns for regression, plus optional grouping
columns such as speaker), or ELAN / Praat files whose one tier's values are the classes
(read and matched to the videos by socialfeat.annotations). Two modes:
- probe: the backbone stays frozen; clips are embedded by the extraction pipeline
  (or read from an existing feats.h5) and a LayerNorm + Linear head is fitted;
- full: backbone and head are trained together (the reference's finetuning recipe,
  with the head's larger learning rate applied to the head's parameters only).
Evaluation splits are grouped: clips of one recording -- and, when a group column is
given, of one speaker -- never land on both sides.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from socialfeat.atomic import atomic_path
from socialfeat.errors import OutputExistsError, SocialfeatError, UsageError
from socialfeat.finetune_progress import FinetuneProgress
from socialfeat.heads import TaskHead, fitted_settings, save_head
from socialfeat.models.digest import payload_digest
from socialfeat.pipeline import worker_init
from socialfeat.store import load_features, read_attrs

log = logging.getLogger(__name__)
RESERVED = {"video", "start", "end", "segment_index", "segment_row"}


# ---------------------------------------------------------------- labels
@dataclass
class Labelling:
    task_type: str  # classification | regression
    columns: list[str]  # label column(s)
    label_names: list[str]  # class names, or trait names (= columns) for regression
    group_columns: list[str]


def infer_labelling(table: pd.DataFrame, task_type: str = "auto", label_columns: list[str] | None = None,
                     group_columns: list[str] | None = None, source: str = "labels file",
                     allow_empty: bool = False) -> Labelling:
    """Which columns are labels and what kind of task they make. ``allow_empty``: an empty text
    label is a class ('' of an annotation kept with --keep-empty)."""
    groups = list(group_columns or [])
    cols = list(label_columns or [c for c in table.columns if c not in RESERVED and c not in groups])
    if not cols:
        raise UsageError("the labels file has no label column (expected video, start, end, then labels)")
    missing = [c for c in cols + groups if c not in table.columns]
    if missing:
        raise UsageError(f"labels file lacks column(s) {missing}")
    for c in cols:
        refuse_empty_labels(table, c, source, allow_empty)
    numeric = all(pd.api.types.is_numeric_dtype(table[c]) for c in cols)
    if task_type == "auto":
        task_type = "regression" if numeric and (len(cols) > 1 or table[cols[0]].nunique() > 20
                                                 or (table[cols[0]] % 1 != 0).any()) else "classification"
    if task_type == "classification":
        if len(cols) != 1:
            raise UsageError(f"classification needs one label column, got {cols}")
        names = class_names(table[cols[0]])
        if len(names) < 2:
            raise UsageError(f"classification needs at least two classes, found {names}")
    elif task_type == "regression":
        if not numeric:
            raise UsageError(f"regression needs numeric label columns, got {cols}")
        names = cols
    else:
        raise UsageError(f"unknown task type {task_type!r}")
    return Labelling(task_type, cols, names, groups)


def class_names(values: pd.Series) -> list[str]:
    """The classes as text, in numeric order when all are numbers (ratings 1, 2, ..., 10, not
    1, 10, 2 as text sorts them), else alphabetically."""
    names = values.astype(str).unique().tolist()
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


# how spreadsheets and R (write.csv writes NA) spell a missing value; compared in lower case
MISSING_SPELLINGS = ("na", "n/a", "#n/a", "nan", "null")


def refuse_empty_labels(table: pd.DataFrame, column: str, source: str, allow_empty: bool = False) -> None:
    """A label cell left empty (or written NA, NaN, NULL ...) is a mistake to fix, not a label: as NaN
    it would turn a column of classes into a regression (and NaN targets), as text ('', 'NA') it would
    become a class of its own, and a score column with one 'nan' would become classes. ``allow_empty``
    (annotation values): '' and 'NA' are values an annotator typed, only a missing one is refused."""
    values = table[column]
    text = values.astype(str).str.strip()
    spelled = text.str.lower().isin(MISSING_SPELLINGS) & values.notna()
    empty = values.isna() if allow_empty else values.isna() | (text == "") | spelled
    if empty.any():
        rows = table["segment_row"][empty] if "segment_row" in table else pd.Series(np.flatnonzero(empty) + 2)
        lines = ", ".join(map(str, sorted(rows.astype(int))[:10])) + (" ..." if empty.sum() > 10 else "")
        how = "is empty" if allow_empty or not spelled.any() else \
            f"is {'empty or ' if (empty & ~spelled).any() else ''}missing (written " \
            f"{', '.join(map(repr, dict.fromkeys(text[spelled])))})"
        raise UsageError(f"{source}: label column {column!r} {how} at line(s) {lines}; fill in those cells "
                         "or remove their rows")


def announce(labelling: Labelling, table: pd.DataFrame, asked: str) -> None:
    """Say on stderr what the labels were taken as; a numeric column read as classes (a Likert
    scale, say) gets the option that makes it a regression."""
    if labelling.task_type == "classification":
        col = labelling.columns[0]
        log.warning("task: classification of %r into %d classes: %s", col, len(labelling.label_names),
                    ", ".join(labelling.label_names[:12]) + (" ..." if len(labelling.label_names) > 12 else ""))
        if asked == "auto" and pd.api.types.is_numeric_dtype(table[col]):
            log.warning("%r holds numbers; if they are a scale (e.g. 1-7 ratings), use --type regression", col)
    else:
        log.warning("task: regression of %s (scored by mean absolute error and Pearson's r)",
                    ", ".join(map(repr, labelling.columns)))


def check_split_plan(table: pd.DataFrame, labelling: Labelling, cv: int, val_fraction: float) -> None:
    """The grouped split or K folds must be possible: checked on the labelled segments (a
    ``path`` per row), before hours of feature extraction."""
    groups = group_ids(table, labelling.group_columns)
    n = len(np.unique(groups))
    if cv and not 2 <= cv <= n:
        raise UsageError(f"--cv {cv}: the labelled clips form {n} independent group(s) (videos joined by "
                         f"{', '.join(labelling.group_columns) or 'nothing else'}); need 2 <= K <= {n}")
    if not cv and n < 2:
        raise UsageError(f"need at least two independent groups (videos/speakers) to hold some out, found {n}")


def targets(table: pd.DataFrame, labelling: Labelling) -> np.ndarray:
    if labelling.task_type == "classification":
        index = {n: i for i, n in enumerate(labelling.label_names)}
        return table[labelling.columns[0]].astype(str).map(index).to_numpy(np.int64, copy=True)
    return table[labelling.columns].to_numpy(np.float32, copy=True)


def group_ids(table: pd.DataFrame, group_columns: list[str]) -> np.ndarray:
    """Connected components of recordings and group values (e.g. speakers): two clips share
    a group when they share a video or a speaker, directly or through others."""
    keys = [("path", table["path"].astype(str).to_numpy())] + [(c, table[c].astype(str).to_numpy())
                                                                for c in group_columns]
    parent: dict[tuple, tuple] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(len(table)):
        nodes = [(c, vals[i]) for c, vals in keys]
        for n in nodes[1:]:
            parent[find(n)] = find(nodes[0])
    roots = [find(("path", v)) for v in keys[0][1]]
    codes = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return np.array([codes[r] for r in roots])


def grouped_folds(groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds over whole groups (no group on both sides)."""
    uniq = np.unique(groups)
    if k < 2 or k > len(uniq):
        raise UsageError(f"--cv {k}: need 2 <= K <= number of groups ({len(uniq)})")
    order = np.random.default_rng(seed).permutation(uniq)
    folds = []
    for part in np.array_split(order, k):
        test = np.isin(groups, part)
        folds.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return folds


def grouped_split(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    uniq = np.random.default_rng(seed).permutation(np.unique(groups))
    n_val = max(1, int(round(val_fraction * len(uniq))))
    if n_val >= len(uniq):
        raise UsageError(f"need at least two groups (videos/speakers) to hold some out, found {len(uniq)}")
    test = np.isin(groups, uniq[:n_val])
    return np.flatnonzero(~test), np.flatnonzero(test)


# ---------------------------------------------------------------- metrics
def evaluate(task_type: str, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> dict[str, float]:
    """Classification: balanced accuracy (unweighted average recall, as the Social-MAE paper)
    and accuracy. Regression, per trait and averaged: mean absolute error on the label's own
    scale, and Pearson's r (NaN where the predictions or the labels do not vary). Balanced accuracy
    is NaN (undefined) when the clips hold one class: it is then that class's recall, whose chance
    level is not 1/K, and a majority baseline of another class scores 0."""
    if task_type == "classification":
        pred = y_pred.argmax(1) if y_pred.ndim == 2 else y_pred
        recalls = [float((pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
        balanced = float(np.mean(recalls)) if len(recalls) > 1 else float("nan")
        return {"balanced_accuracy": balanced, "accuracy": float((pred == y_true).mean())}
    y_true, y_pred = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    mae = np.abs(y_pred - y_true).mean(0)
    r = np.array([pearson_r(y_true[:, k], y_pred[:, k]) for k in range(y_true.shape[1])])
    out = {f"mae_{n}": float(m) for n, m in zip(label_names, mae)}
    out.update({f"r_{n}": float(v) for n, v in zip(label_names, r)})
    out["mae_mean"] = float(mae.mean())
    out["r_mean"] = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
    return out


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def baseline_predictions(task_type: str, y_train: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    """Majority class / training mean: the score a model must beat."""
    if task_type == "classification":
        return np.full(n, np.bincount(y_train, minlength=n_classes).argmax())
    return np.repeat(y_train.mean(0, keepdims=True), n, axis=0)


def summarise(folds: list[dict[str, float]]) -> dict[str, Any]:
    """Mean over the folds where a score is defined, and their standard deviation when there are
    several (one split has none); None when no fold defines it, and ``undefined_folds`` counts the
    folds left out of the mean."""
    out: dict[str, Any] = {}
    for k in folds[0]:
        values = np.array([f[k] for f in folds], dtype=float)
        defined = values[np.isfinite(values)]
        out[k] = {"mean": float(defined.mean()) if len(defined) else None}
        if len(folds) > 1:
            out[k]["sd"] = float(defined.std()) if len(defined) > 1 else None
        if len(defined) < len(values):
            out[k]["undefined_folds"] = int(len(values) - len(defined))
    return out


def add_single_class_folds(metrics: dict[str, Any], labelling: Labelling, held_out: list[np.ndarray]) -> None:
    """Record (``single_class_folds``, numbered from 1) and say in a warning which held-out folds hold
    clips of one class only: their balanced accuracy is undefined (null in the metrics)."""
    if labelling.task_type != "classification":
        return
    folds = [k + 1 for k, y in enumerate(held_out) if len(np.unique(y)) < 2]
    metrics["single_class_folds"] = folds
    if folds:
        log.warning("held-out fold(s) %s of %d hold clips of one class only: balanced accuracy is undefined "
                    "there (null in the metrics); use fewer folds (--cv), a larger --val-fraction or more "
                    "recordings", ", ".join(map(str, folds)), len(held_out))


# ---------------------------------------------------------------- probe
def loss_fn(task_type: str, regression_loss: str):
    if task_type == "classification":
        return nn.CrossEntropyLoss()
    return nn.L1Loss() if regression_loss == "l1" else nn.MSELoss()


def fit_head(x: np.ndarray, y: np.ndarray, labelling: Labelling, regression_loss: str = "l1", epochs: int = 300,
             lr: float = 1e-2, weight_decay: float = 1e-3, seed: int = 0) -> TaskHead:
    """Full-batch AdamW on a LayerNorm + Linear head."""
    torch.manual_seed(seed)
    head = TaskHead(x.shape[1], len(labelling.label_names))
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    crit = loss_fn(labelling.task_type, regression_loss)
    for _ in range(epochs):
        opt.zero_grad()
        crit(head(xt), yt).backward()
        opt.step()
    return head.eval()


def _head_predict(head: TaskHead, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(x)).numpy()


COVER_TOLERANCE_S = 0.05  # time of a labelled segment its clips may leave uncovered (rounding of bounds)


def segment_clips(clips: pd.DataFrame, seg: dict[str, Any], duration: float) -> pd.DataFrame | None:
    """The clips of one video lying inside labelled segment ``seg``; None when they do not cover its
    time (up to the video's end): the features file was made from other segments."""
    start = max(0.0, float(seg["start"]))
    end = min(float(seg["end"]), duration) if np.isfinite(duration) else float(seg["end"])
    tol = COVER_TOLERANCE_S
    inside = clips[(clips["start_s"] >= start - tol) & (clips["end_s"] <= end + tol)]
    inside = inside.drop_duplicates(["start_s", "end_s"])
    covered = start
    for a, b in sorted(zip(inside["start_s"], inside["end_s"])):
        if a > covered + tol:
            break
        covered = max(covered, b)
    return inside if covered >= end - tol else None


def describe_segments(segs: list[tuple[str, dict[str, Any]]], n: int = 3) -> str:
    """'line 4: a.mp4 1-5 s, ...' for a message (the first ``n``)."""
    text = ", ".join(f"{'line ' + str(s['segment_row']) + ': ' if 'segment_row' in s else ''}{path} "
                     f"{float(s['start']):g}-{float(s['end']):g} s" for path, s in segs[:n])
    return text + (f" and {len(segs) - n} more" if len(segs) > n else "")


def warn_segments_after_end(late: list[tuple[str, dict[str, Any], float]], n: int = 3) -> None:
    """Say which labelled segments (path, segment, video duration) start after their video's end: they
    have no clip, and leaving them out unsaid loses rows (or a whole class) of labels made for a longer
    version of the recording, or in other units."""
    if late:
        text = "; ".join(f"{describe_segments([(path, seg)])}, video {duration:.2f} s"
                         for path, seg, duration in late[:n])
        log.warning("%d labelled segment(s) start after the end of their video (%s%s) and are left out: check "
                    "their times (seconds) and videos", len(late), text,
                    f" and {len(late) - n} more" if len(late) > n else "")


def starts_after_end(seg: dict[str, Any], duration: float) -> bool:
    return bool(np.isfinite(duration)) and float(seg["start"]) >= duration - 1e-6


def labelled_embeddings(df: pd.DataFrame, table: dict[str, list[dict[str, Any]]], labelling: Labelling,
                        emb_cols: list[str], features: str | Path, strict: bool) -> pd.DataFrame:
    """The labels decide: each labelled segment (``table``, keyed by the features file's video paths)
    takes the features file's clips lying inside it, with the segment's labels and groups; the file's
    own label columns are not read. A segment whose time the file's clips do not cover (the file was
    extracted from other segments) is refused when ``strict`` (a file the user gave), else warned
    about; segments of videos the extraction could not read are left out with a warning."""
    from socialfeat.store import load_videos

    status = load_videos(features).set_index("path")["status"].astype(str)
    by_video = {path: clips for path, clips in df.groupby("path", sort=False)}
    carried = list(dict.fromkeys(labelling.columns + labelling.group_columns))
    parts, uncovered, unread, late = [], [], [], []
    for path, segs in table.items():
        clips = by_video.get(path, df.iloc[:0])
        duration = float(clips["video_duration_s"].iloc[0]) if len(clips) else float("nan")
        for seg in segs:
            if starts_after_end(seg, duration):
                late.append((path, seg, duration))
                continue
            inside = segment_clips(clips, seg, duration)
            if inside is not None:
                parts.append(inside[["path", "start_s", "end_s", *emb_cols]].assign(**{c: seg[c] for c in carried}))
            elif status.get(path, "skipped") in ("ok", "skipped"):
                uncovered.append((path, seg))
            else:
                unread.append((path, seg))
    warn_segments_after_end(late)
    if unread:
        log.warning("%s: %d labelled segment(s) of videos it could not read (see its errors table) are left "
                    "out: %s", features, len(unread), describe_segments(unread))
    if uncovered and strict:
        raise UsageError(f"{features} lacks the clips of {len(uncovered)} labelled segment(s) "
                         f"({describe_segments(uncovered)}): it was extracted from other segments; extract "
                         "them with --segments LABELS, or leave out --features to extract them")
    if uncovered:
        log.warning("%s: %d labelled segment(s) have no clips in it and are left out: %s", features,
                    len(uncovered), describe_segments(uncovered))
    if not parts:
        raise UsageError(f"{features}: none of the labelled segments has clips in it")
    return pd.concat(parts, ignore_index=True)


def probe(features: str | Path, task: str, labelling: Labelling, output: str | Path,
          table: dict[str, list[dict[str, Any]]], embedding: str = "joint", cv: int = 0,
          val_fraction: float = 0.2, regression_loss: str = "l1", epochs: int = 300, lr: float = 1e-2,
          seed: int = 0, tier: str | None = None, strict: bool = True) -> dict[str, Any]:
    """Fit a head on the embeddings of a features file's clips that lie inside the labelled
    segments ``table`` (labels and groups from the table; for annotation files, only the clips of
    annotation ``tier``). Reports held-out metrics (grouped split or grouped K-fold) against a
    baseline, then saves a head fitted on all clips. ``strict``: see labelled_embeddings."""
    df = load_features(features, embeddings=embedding)
    if tier is not None:
        if "tier" not in df:
            raise UsageError(f"{features}: clips have no annotation tier; extract with --segments ANNOTATIONS")
        df = df[df["tier"] == tier].reset_index(drop=True)
    emb_cols = [c for c in df.columns if c.startswith(f"{embedding}_")]
    df = labelled_embeddings(df, table, labelling, emb_cols, features, strict)
    keep = np.isfinite(df[emb_cols].to_numpy()).all(axis=1)
    dropped = int((~keep).sum())
    if dropped:
        log.warning("%d clip(s) without a %s embedding are left out", dropped, embedding)
    df = df[keep].reset_index(drop=True)
    x = df[emb_cols].to_numpy(np.float32, copy=True)  # writable: torch refuses read-only views
    y = targets(df, labelling)
    groups = group_ids(df, labelling.group_columns)
    splits = grouped_folds(groups, cv, seed) if cv else [grouped_split(groups, val_fraction, seed)]
    fold_scores, fold_base = [], []
    for train_idx, test_idx in splits:
        head = fit_head(x[train_idx], y[train_idx], labelling, regression_loss, epochs, lr, seed=seed)
        fold_scores.append(evaluate(labelling.task_type, y[test_idx], _head_predict(head, x[test_idx]),
                                    labelling.label_names))
        base = baseline_predictions(labelling.task_type, y[train_idx], len(test_idx), len(labelling.label_names))
        fold_base.append(evaluate(labelling.task_type, y[test_idx], base, labelling.label_names))
    attrs = read_attrs(features)
    metrics = {"mode": "probe", "task_type": labelling.task_type, "embedding": embedding, "n_clips": len(df),
               "n_groups": int(len(np.unique(groups))), "folds": len(splits),
               "held_out": summarise(fold_scores), "baseline": summarise(fold_base)}
    add_single_class_folds(metrics, labelling, [y[test] for _, test in splits])
    head = fit_head(x, y, labelling, regression_loss, epochs, lr, seed=seed)
    save_head(head, output, task=task, task_type=labelling.task_type, label_names=labelling.label_names,
              embedding=embedding, backbone_sha256=str(attrs["weights_sha256"]),
              backbone_name=str(attrs["model_name"]), metrics=metrics,
              settings=fitted_settings(json.loads(attrs.get("settings") or "{}"), embedding))
    return metrics


# ---------------------------------------------------------------- full finetuning
class LabelledClips(Dataset):
    """Fixed windows inside each labelled segment, decoded on demand (same reader as
    pretraining): (audio, video, target, position), or the SkippedClip of a damaged one."""

    def __init__(self, rows: list[dict[str, Any]], infos: dict[str, Any], preprocess):
        self.rows, self.infos, self.preprocess = rows, infos, preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from pretraining.data import SkippedClip, read_clip_or_skip
        r = self.rows[i]
        x = read_clip_or_skip(self.infos[r["path"]], self.preprocess, r["start_s"], r["window_s"], r["end_s"])
        if isinstance(x, SkippedClip):
            return x
        audio = x.audio if x.audio is not None else torch.zeros(self.preprocess.target_length, self.preprocess.num_mel_bins)
        return audio, x.video, torch.as_tensor(r["target"]), i


class SkippedClips:
    """The damaged clips met while finetuning, each once: a warning on stderr per file,
    and the full list in the metrics file."""

    def __init__(self) -> None:
        self.clips: dict[tuple[str, float], Any] = {}
        self.warned: set[str] = set()

    def add(self, skipped: list) -> None:
        for c in skipped:
            if c.path not in self.warned:
                self.warned.add(c.path)
                log.warning("skipping damaged clips of %s (first at %.2f s: %s); all are listed in the "
                            "metrics file", c.path, c.start_s, c.error)
            self.clips.setdefault((c.path, c.start_s), c)

    def records(self) -> list[dict[str, Any]]:
        return [{"path": c.path, "start_s": c.start_s, "error": c.error}
                for _, c in sorted(self.clips.items())]


class UnreadableFoldError(SocialfeatError):
    """A held-out fold none of whose clips could be read: nothing to score it on."""


def unreadable_fold_message(fold: int, n_folds: int, paths: np.ndarray, skipped: SkippedClips,
                            infos: dict[str, Any]) -> str:
    """One line naming the fold's videos and why their clips could not be read. Leaving the fold
    out instead would score the model on the other folds only, under a name that says all."""
    videos = list(dict.fromkeys(map(str, paths)))
    errors: dict[str, str] = {}
    for c in skipped.clips.values():
        errors.setdefault(c.path, c.error)  # the first met: said in the warning too
    why = "; ".join(f"{v}: {errors.get(str(infos[v].path), 'unreadable')}" for v in videos[:3]) + (" ..." if len(videos) > 3 else "")
    return (f"held-out fold {fold} of {n_folds}: none of its clips could be read ({why}); fix those videos or "
            "remove their rows from the labels")


def finetune_full(clips: pd.DataFrame, infos: dict[str, Any], base: nn.Module, task: str, labelling: Labelling,
                  output: str | Path, cv: int = 0, val_fraction: float = 0.2, epochs: int = 10,
                  lr: float = 1e-4, head_lr_mult: float = 50.0, batch_size: int = 8, regression_loss: str = "l1",
                  workers: int = 0, seed: int = 0) -> dict[str, Any]:
    """Train backbone + head (initialised from the loaded backbone ``base``) on the labelled
    clips (rows of a clips table with targets)."""
    from pretraining.data import SkippedClip, collate_readable
    from pretraining.init import copy_matching_weights
    from socialfeat.models import save_checkpoint
    from socialfeat.models.checkpoint import ModelInfo, build_model
    from socialfeat.models.families import class_name, model_kwargs

    base_weights = base.state_dict()
    y = targets(clips, labelling)
    rows = [{**r, "target": t} for r, t in zip(clips[["path", "start_s", "end_s", "window_s"]].to_dict("records"),
                                               y.tolist())]
    groups = group_ids(clips, labelling.group_columns)
    skipped = SkippedClips()
    settings = dict(task=task, labelling=labelling.__dict__, cv=cv, val_fraction=val_fraction, epochs=epochs, lr=lr,
                    head_lr_mult=head_lr_mult, batch_size=batch_size, regression_loss=regression_loss, seed=seed)
    progress = FinetuneProgress(output, payload_digest({"weights": base.info.sha256, "rows": rows,
                                                     "groups": groups.tolist(), "settings": settings}))
    saved = progress.load()
    if saved is not None:
        skipped.clips = {(c["path"], c["start_s"]): SkippedClip(**c) for c in saved["skipped"]}

    def loader(idx: np.ndarray, generator: torch.Generator | None = None) -> DataLoader:
        """Batches of the clips ``idx``, shuffled with ``generator``; damaged clips are left out (and recorded)."""
        return DataLoader(LabelledClips([rows[i] for i in idx], infos, base.info.preprocess),
                          batch_size=batch_size, shuffle=generator is not None, num_workers=workers,
                          worker_init_fn=worker_init, collate_fn=collate_readable, generator=generator)

    def new_model():
        family_kwargs = model_kwargs(base.info.model_kwargs, "finetune", len(labelling.label_names))
        info = ModelInfo(name=f"{base.info.name}+{task}", model_class=class_name(base.info.family, "finetune"),
                         model_kwargs=family_kwargs, preprocess=base.info.preprocess, task=labelling.task_type,
                         task_name=task, label_names=list(labelling.label_names))
        torch.manual_seed(seed)
        model = build_model(info)
        copy_matching_weights(model, base_weights, "reference")  # encoder weights; a fresh head
        return model

    def train(idx: np.ndarray, stage: int, folds_done: list[dict[str, Any]]):
        """The model trained on the clips ``idx``; training ``stage`` of the run (the folds', then the
        final one) goes on from its saved epoch, and its state is saved after every epoch."""
        model = new_model().train()
        head = [p for n, p in model.named_parameters() if n.startswith("mlp_head.")]
        body = [p for n, p in model.named_parameters() if not n.startswith("mlp_head.") and p.requires_grad]
        opt = torch.optim.Adam([{"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_mult}],
                               weight_decay=5e-7, betas=(0.95, 0.999))
        crit = loss_fn(labelling.task_type, regression_loss)
        shuffling = torch.Generator().manual_seed(seed)
        batches = loader(idx, shuffling)
        first = 0
        if saved is not None and saved["stage"] == stage and saved["epoch"]:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            shuffling.set_state(saved["shuffling"])
            torch.set_rng_state(saved["torch_rng"])
            first = saved["epoch"]
        for epoch in range(first, epochs):
            for batch, skipped_here in batches:
                skipped.add(skipped_here)
                if batch is None:
                    continue
                audio, video, target, _ = batch
                loss = crit(model(audio, video, "multimodal"), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
            progress.save({"stage": stage, "epoch": epoch + 1, "folds_done": folds_done, "model": model.state_dict(),
                           "optimizer": opt.state_dict(), "shuffling": shuffling.get_state(),
                           "torch_rng": torch.get_rng_state(), "skipped": skipped.records()})
        return model.eval()

    def predict(model, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions for the clips of ``idx`` that could be read, and which those are."""
        outputs, read = [], []
        with torch.no_grad():
            for batch, skipped_here in loader(idx):
                skipped.add(skipped_here)
                if batch is not None:
                    audio, video, _, position = batch
                    outputs.append(model(audio, video, "multimodal").numpy())
                    read.append(position.numpy())
        if not outputs:
            return np.empty((0, len(labelling.label_names)), np.float32), np.empty(0, np.int64)
        return np.concatenate(outputs), np.concatenate(read)

    splits = grouped_folds(groups, cv, seed) if cv else [grouped_split(groups, val_fraction, seed)]
    folds_done: list[dict[str, Any]] = saved["folds_done"] if saved is not None else []  # scores, held-out targets
    for fold, (train_idx, test_idx) in enumerate(splits, 1):
        if fold <= len(folds_done):
            continue
        model = train(train_idx, fold - 1, folds_done)
        pred, read = predict(model, test_idx)
        if not len(read):
            raise UnreadableFoldError(unreadable_fold_message(fold, len(splits), clips["path"].to_numpy()[test_idx],
                                                              skipped, infos))
        truth = y[test_idx][read]
        base_pred = baseline_predictions(labelling.task_type, y[train_idx], len(read), len(labelling.label_names))
        folds_done.append({"score": evaluate(labelling.task_type, truth, pred, labelling.label_names),
                           "baseline": evaluate(labelling.task_type, truth, base_pred, labelling.label_names),
                           "held_out": truth})
        progress.save({"stage": fold, "epoch": 0, "folds_done": folds_done, "skipped": skipped.records()})
    final = train(np.arange(len(rows)), len(splits), folds_done)
    scores, base_scores = [f["score"] for f in folds_done], [f["baseline"] for f in folds_done]
    held_out = [f["held_out"] for f in folds_done]
    metrics = {"mode": "full", "task_type": labelling.task_type, "n_clips": len(rows),
               "n_groups": int(len(np.unique(groups))), "folds": len(splits),
               "held_out": summarise(scores), "baseline": summarise(base_scores),
               "skipped_clips": skipped.records()}
    add_single_class_folds(metrics, labelling, held_out)
    save_checkpoint(final, output, extra={"finetuned_from": base.info.sha256, "metrics": metrics})
    progress.remove()
    return metrics


def metrics_path(output: str | Path) -> Path:
    return Path(str(output) + ".metrics.json")


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None: bare NaN is not JSON (R's jsonlite, JavaScript and
    strict parsers refuse the whole file); numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def metrics_json(metrics: dict[str, Any]) -> str:
    """Metrics as strict JSON (missing numbers as null)."""
    return json.dumps(json_safe(metrics), indent=1, allow_nan=False)


def write_metrics(metrics: dict[str, Any], output: str | Path) -> Path:
    """Write ``<output>.metrics.json`` atomically, as the head or model beside it is: a run killed
    (or a disk filled) while writing it leaves the earlier metrics whole, not a truncated JSON."""
    path = metrics_path(output)
    text = metrics_json(metrics)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
    return path


def refuse_to_replace(output: str | Path, overwrite: bool) -> None:
    """A head or model fitted earlier under the same name is work that a rerun must not
    destroy unasked: refuse before any extraction or training starts."""
    existing = [p for p in (Path(output), metrics_path(output)) if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists: use --overwrite to replace it")


# ---------------------------------------------------------------- entry point
def labelled_clips(inputs: list[str | Path], table: dict[str, list[dict[str, Any]]], clip_seconds: float):
    """Clips (fixed windows inside each labelled segment) of the videos found under ``inputs``,
    with their label columns; plus the media facts of each video."""
    from socialfeat.clips import plan_video
    from socialfeat.extract import segments_for
    from socialfeat.media import MediaError
    from socialfeat.media import probe as probe_media
    from socialfeat.walk import find_videos

    rows, infos, late = [], {}, []
    for ref in find_videos(list(inputs)):
        segs = segments_for(ref, table)
        if not segs:
            continue
        try:
            info = probe_media(ref.path)
        except MediaError as e:
            log.warning("skipping %s", e)
            continue
        infos[ref.relpath] = info
        late += [(ref.relpath, seg, info.duration) for seg in segs if starts_after_end(seg, info.duration)]
        for c in plan_video(ref.video_id, info.duration, clip_seconds, None, segs):
            rows.append({"path": ref.relpath, "start_s": c.start, "end_s": c.end, "window_s": c.window,
                         **c.extra})
    warn_segments_after_end(late)
    if not rows:
        raise UsageError("no labelled clip matches the input videos (check the labels' video column)")
    return pd.DataFrame(rows), infos


def annotation_labels(labels: str | Path, inputs: list[str | Path], features: str | Path | None,
                      tiers: list[str] | None, keep_empty: bool = False,
                      annotation_map: str | Path | None = None) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """ELAN / Praat files as labels: the values of one tier, as a segments table keyed by the
    videos under ``inputs`` (or, with only ``features``, the videos that file was made from)."""
    from socialfeat.annotations import AnnotationError, load_annotations, segments_table
    from socialfeat.walk import find_videos

    if tiers is not None and len(tiers) != 1:
        raise AnnotationError(f"labels: name one tier with --tiers, got {tiers}")
    refs = find_videos(list(inputs)) if inputs else feature_videos(features)
    annotations = load_annotations(labels, refs, tiers=tiers, keep_empty=keep_empty, mapping=annotation_map)
    if len(annotations.tiers) != 1:
        raise AnnotationError(f"{labels}: tiers {', '.join(annotations.tiers) or '(none)'}: name the label tier "
                              "with --tiers")
    return annotations.tiers[0], segments_table(annotations)


def feature_videos(features: str | Path) -> list:
    """The videos a features file was made from, as input videos (its relative paths)."""
    from socialfeat.store import load_videos
    from socialfeat.walk import VideoRef

    videos = load_videos(features)
    return [VideoRef(Path(src), rel) for src, rel in zip(videos.source_path, videos.path)]


def csv_labels(labels: str | Path, inputs: list[str | Path], features: str | Path | None,
               warn: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The labels CSV's segments keyed by the input videos' relative paths; with ``features``, by the
    videos of that file, and a row naming none of them is refused (its clips are not there to use).
    ``warn``: say which rows name no input video (off when the extraction that follows says it)."""
    from socialfeat.clips import match_segments, read_segments
    from socialfeat.walk import find_videos

    raw = read_segments(labels)
    if features is None:
        return match_segments(raw, find_videos(list(inputs)), labels, warn=warn)
    table = match_segments(raw, feature_videos(features), labels, warn=False)
    matched = {s["segment_row"] for segs in table.values() for s in segs}
    lines = sorted(s["segment_row"] for segs in raw.values() for s in segs if s["segment_row"] not in matched)
    if lines:
        raise UsageError(f"{labels}: line(s) {', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''} "
                         f"name no video of {features}; extract those videos with --segments {labels}, or "
                         "remove the rows")
    return table


def finetune(inputs: list[str | Path], labels: str | Path, output: str | Path, task: str, *,
             tiers: list[str] | None = None, keep_empty: bool = False, annotation_map: str | Path | None = None,
             model: str = "social-mae", weights: str | Path | None = None, probe_only: bool = True,
             features: str | Path | None = None, embedding: str = "joint", task_type: str = "auto",
             label_columns: list[str] | None = None, group_columns: list[str] | None = None, cv: int = 0,
             val_fraction: float = 0.2, epochs: int | None = None, lr: float | None = None,
             head_lr_mult: float = 50.0, batch_size: int = 8, regression_loss: str = "l1", workers: int = 2,
             seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fit a head (probe) or a whole finetuned model; writes ``output`` and ``output.metrics.json``
    (an existing ``output`` is refused unless ``overwrite``; the output is claimed before any work).
    ``labels``: a CSV, or ELAN / Praat files whose tier (``tiers``: one name) holds the labels; they
    decide which clips are used and their labels, also with ``features`` (which supplies embeddings)."""
    from socialfeat.annotations import is_annotation_source
    from socialfeat.extract import extract
    from socialfeat.outputs import claim_output

    if features is not None and not probe_only:
        raise UsageError("--features works with --probe only (full finetuning reads the videos)")
    refuse_to_replace(output, overwrite)
    with claim_output(output):
        tier, annotation_opts = None, {}
        if is_annotation_source(labels):
            tier, table = annotation_labels(labels, inputs, features, tiers, keep_empty, annotation_map)
            label_columns = label_columns or ["value"]
            annotation_opts = dict(tiers=[tier], keep_empty=keep_empty, annotation_map=annotation_map)
        else:
            table = csv_labels(labels, inputs, features, warn=not (probe_only and features is None))
        flat = pd.DataFrame([s for segs in table.values() for s in segs])
        if flat.empty:
            raise UsageError(f"{labels}: no labelled segment matches the input videos")
        labelling = infer_labelling(flat, task_type, label_columns, group_columns, source=str(labels),
                                    allow_empty=tier is not None)
        videos = [key for key, segs in table.items() for _ in segs]  # the video each row was matched to
        announce(labelling, flat, task_type)
        check_split_plan(flat.assign(path=videos), labelling, cv, val_fraction)
        backbone = Path(weights) if weights is not None else model  # a file, or a registry name
        if probe_only:
            strict = features is not None  # a file the user gave must hold the labelled clips
            if features is None:
                features = Path(str(output) + ".features.h5")
                extract(list(inputs), features, model=model, weights=weights, segments=labels, workers=workers,
                        batch_size=batch_size, progress=progress, **annotation_opts)
            metrics = probe(features, task, labelling, output, table, embedding, cv, val_fraction, regression_loss,
                            epochs or 300, lr or 1e-2, seed, tier=tier, strict=strict)
        else:
            from socialfeat.models import load_model
            base = load_model(backbone)  # loaded once: its clip length plans the clips, its weights start training
            clips, infos = labelled_clips(inputs, table, base.info.preprocess.clip_seconds)
            metrics = finetune_full(clips, infos, base, task, labelling, output, cv, val_fraction, epochs or 10,
                                    lr or 1e-4, head_lr_mult, batch_size, regression_loss, workers, seed)
        metrics.update(task=task, label_names=list(labelling.label_names), labels_file=str(labels))
        if tier is not None:
            metrics["label_tier"] = tier
        write_metrics(metrics, output)
    return metrics
