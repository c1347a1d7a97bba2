"""Task predictions on top of the encoder: light heads on embeddings, and whole
finetuned models, behind one interface used by ``extract --tasks``.

A light head (``socialfeat finetune --probe``) is LayerNorm + Linear on one
embedding kind -- the same shape as the released models' ``mlp_head`` -- saved
with its task type, label names, embedding kind, the SHA-256 of the backbone
whose embeddings it was fitted on, and the extraction settings that change what
those embeddings describe (``fitted_settings``); it refuses to run on any other
backbone, and ``extract`` checks the settings (``check_fitted_settings``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from socialfeat.atomic import atomic_path
from socialfeat.errors import SocialfeatError, UsageError
from socialfeat.models import (
    fetch,
    get_pretrained_cfg,
    list_pretrained,
    load_model,
    read_checkpoint,
)
from socialfeat.models.avmae import Encoding
from socialfeat.models.checkpoint import FORMAT as CHECKPOINT_FORMAT
from socialfeat.models.checkpoint import HEAD_FORMAT

log = logging.getLogger(__name__)

# what the stored numbers are, per task type
VALUES = {"classification": "softmax probabilities", "multilabel": "sigmoid probabilities",
          "regression": "scores on the training labels' scale"}


class HeadMismatchError(SocialfeatError, ValueError):
    """A head used with a backbone other than the one it was trained on."""


class HeadSettingsError(UsageError, HeadMismatchError):
    """A head applied to embeddings made under other settings than those it was fitted on."""


# The extraction settings that change what an embedding describes, per embedding kind (the audio
# embedding never sees the frames, the visual one never hears the track: models.avmae.encode):
# - crop: a face crop and the whole frame are different images of the scene;
# - clip_seconds: the window over which the frames are spread and the audio is heard (hop_seconds
#   only moves windows, a clip's content stays alike);
# - missing_audio: 'silence' embeds silence where a clip has no audio track, 'nan' leaves it empty.
# Not among them: precision (bf16 / int8 compute the same embedding less exactly, cosine >= 0.999 to
# fp32, docs/performance.md: rounding, not another kind of embedding), hop, faces / require_face (which
# clips or face tracks get rows, not what a row's embedding is), segments, batch size.
SETTINGS_BY_EMBEDDING = {"joint": ("crop", "clip_seconds", "missing_audio"),
                         "audio": ("clip_seconds", "missing_audio"), "visual": ("crop", "clip_seconds")}
# a difference of these only warns: it changes only the clips without an audio track (no_audio in
# qc_flags), which get either no prediction (a 'nan' run: visibly empty) or one on embedded silence (a
# 'silence' run: flagged silence_embedded); a difference of the others changes every row
WARN_ONLY = ("missing_audio",)
OPTIONS = {"crop": "--crop", "clip_seconds": "--clip-seconds", "missing_audio": "--missing-audio"}


def fitted_settings(settings: Mapping[str, Any], embedding: str) -> dict[str, Any]:
    """The settings among an extraction's ``settings`` (a features file's ``settings`` attribute)
    that change what its ``embedding`` describes: what a head fitted on it records."""
    return {k: settings[k] for k in SETTINGS_BY_EMBEDDING.get(embedding, ()) if k in settings}


def _same(fitted: Any, now: Any) -> bool:
    if isinstance(fitted, (int, float)) and isinstance(now, (int, float)):
        return math.isclose(fitted, now, rel_tol=1e-6, abs_tol=1e-6)
    return fitted == now


def check_fitted_settings(tasks: list["Task"], run: Mapping[str, Any]) -> None:
    """Refuse (one line) a head whose fitted crop or clip length differs from this run's ``run``
    settings, warn for missing_audio (WARN_ONLY): predictions from a head fitted on other
    embeddings look valid and are not, so a silent mismatch costs more than a rerun. A head written
    before heads recorded settings (``fitted`` None), or from a features file that lacked one, is
    used with one warning that says what cannot be checked. A whole finetuned model states its own
    clip length (its preprocessing): a run with another ``--clip-seconds`` is warned, not refused (the
    backbone's embeddings may be wanted at that length; the model's predictions are then for windows
    unlike those it learnt from)."""
    for task in tasks:
        if task.head is None:
            own = getattr(getattr(getattr(task.model, "info", None), "preprocess", None), "clip_seconds", None)
            if own is not None and "clip_seconds" in run and not _same(float(own), run["clip_seconds"]):
                log.warning("task %r: %s was finetuned on clips of %g s, this run uses --clip-seconds %g: its "
                            "predictions are for windows unlike those it learnt from", task.name,
                            task.source or "the model", float(own), run["clip_seconds"])
            continue
        wanted = SETTINGS_BY_EMBEDDING.get(task.embedding, ())
        fitted = task.fitted or {}
        unknown = [k for k in wanted if k not in fitted]
        if unknown:
            log.warning("task %r: head %s does not record the %s it was fitted with (written by an earlier "
                        "socialfeat, or fitted on an older features file): not checked against this run; refit it "
                        "to have it checked", task.name, task.source, ", ".join(OPTIONS[k] for k in unknown))
        for key in wanted:
            if key not in fitted or key not in run or _same(fitted[key], run[key]):
                continue
            option, then, now = OPTIONS[key], fitted[key], run[key]
            if key in WARN_ONLY:
                log.warning("task %r: head %s was fitted on embeddings made with %s %s, this run uses %s %s: "
                            "its predictions for clips without an audio track (no_audio in qc_flags) are not "
                            "comparable with what it was fitted on", task.name, task.source, option, then, option, now)
                continue
            raise HeadSettingsError(
                f"task {task.name!r}: head {task.source} was fitted on {task.embedding} embeddings made with "
                f"{option} {then}, this run uses {option} {now}; extract with {option} {then} for this head, or "
                f"fit one on embeddings made with {option} {now} (extract --segments LABELS {option} {now}, then "
                "finetune --probe --features)")


class TaskHead(nn.Module):
    """LayerNorm + Linear on a (B, D) embedding -> (B, K) logits or trait scores."""

    def __init__(self, dim: int, n_outputs: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def outputs_to_values(outputs: torch.Tensor, task_type: str) -> torch.Tensor:
    """Classification -> softmax probabilities; multilabel -> sigmoid; regression -> the scores."""
    if task_type == "classification":
        return torch.softmax(outputs.float(), dim=-1)
    if task_type == "multilabel":
        return torch.sigmoid(outputs.float())
    return outputs.float()


def save_head(head: TaskHead, path: str | Path, *, task: str, task_type: str, label_names: list[str],
              embedding: str, backbone_sha256: str, backbone_name: str, metrics: dict | None = None,
              settings: Mapping[str, Any] | None = None) -> Path:
    """Write a head checkpoint atomically. ``settings``: the extraction settings of the embeddings it
    was fitted on (fitted_settings), checked when it is applied (check_fitted_settings)."""
    payload = {"format": HEAD_FORMAT, "task": task, "task_type": task_type, "label_names": list(label_names),
               "embedding": embedding, "backbone_sha256": backbone_sha256, "backbone_name": backbone_name,
               "settings": dict(settings or {}),
               "dim": head.norm.normalized_shape[0], "metrics": metrics or {},
               "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


@dataclass
class Task:
    """One prediction source for extraction: a light head or a whole finetuned model."""

    name: str
    task_type: str
    label_names: list[str]
    head: TaskHead | None = None  # light head ...
    embedding: str = "joint"
    model: nn.Module | None = None  # ... or a whole finetuned model (its own forward pass)
    source: str = ""
    fitted: dict[str, Any] | None = None  # a light head's fitted_settings (None: a head from before they were kept)

    def to(self, device: torch.device) -> "Task":
        for m in (self.head, self.model):
            if m is not None:
                m.to(device).eval()
        return self

    def predict(self, shared: Encoding, audio: torch.Tensor | None, video: torch.Tensor) -> torch.Tensor | None:
        """(B, K) values, or None when the inputs lack what this task needs (e.g. no audio)."""
        if self.head is not None:
            emb = getattr(shared, self.embedding)
            return None if emb is None else outputs_to_values(self.head(emb.float()), self.task_type)
        if audio is None:
            return None
        enc = self.model.encode(audio, video, kinds=("joint",))  # its head reads the joint embedding only
        return outputs_to_values(enc.logits, self.task_type)

    def meta(self) -> dict[str, Any]:
        return {"label_names": list(self.label_names), "task": self.task_type, "values": VALUES[self.task_type],
                "source": self.source, "embedding": self.embedding if self.head is not None else "own model"}


def _from_finetuned_model(name: str, model: nn.Module, backbone_info, bare: bool = False) -> Task:
    """A whole finetuned model as a task (``bare``: read from an official state dict, without metadata)."""
    info = model.info
    if info.task is None and hasattr(model, "mlp_head") and bare:
        raise UsageError(f"task {name!r}: {info.source} is a bare state dict, which names no task type or labels; "
                         f"give it under the released task it belongs to ({', '.join(released_tasks())}), or "
                         f"save it with socialfeat.models.save_checkpoint after setting model.info.task and "
                         f"label_names")
    if info.task is None or not info.label_names:
        raise UsageError(f"task {name!r}: {info.source} has no task head")
    if info.preprocess != backbone_info.preprocess:
        raise HeadMismatchError(f"task {name!r}: {info.source} expects other inputs ({info.preprocess.family}, "
                                f"{info.preprocess.clip_seconds} s) than the extraction model")
    return Task(name, info.task, list(info.label_names), model=model, source=str(info.source))


RELEASED_TASK_PREFIX = "social-mae-"


def released_tasks() -> list[str]:
    """The NAMEs that ``--tasks NAME`` accepts: released finetuned Social-MAE models."""
    return [n[len(RELEASED_TASK_PREFIX):] for n in list_pretrained()
            if n.startswith(RELEASED_TASK_PREFIX) and get_pretrained_cfg(n).task_name]


def supply_option(model: str) -> str:
    """How a user gives a registry entry's file by hand (said where it cannot be downloaded): a
    released task model is a predictor, ``--tasks NAME=PATH``; any other entry ``--weights PATH``."""
    if model.startswith(RELEASED_TASK_PREFIX) and model[len(RELEASED_TASK_PREFIX):] in released_tasks():
        return f"--tasks {model[len(RELEASED_TASK_PREFIX):]}=PATH"
    return "--weights PATH"


def released_task_model(name: str) -> str:
    """Registry name of the released model behind ``--tasks NAME``, or a one-line UsageError
    that says how to give a head file (NAME=PATH) instead."""
    name = name.strip()
    if name in released_tasks():
        return RELEASED_TASK_PREFIX + name
    if "/" in name or name.endswith((".pt", ".pth")) or Path(name).exists():
        stem = Path(name).stem or "task"
        raise UsageError(f"--tasks {name}: a head or model file needs a task name: --tasks {stem}={name}")
    raise UsageError(f"--tasks {name}: not a released task (known: {', '.join(released_tasks())}); "
                     f"for a head you fitted, give --tasks {name}=PATH")


def load_task(request: str, backbone_info) -> Task:
    """``NAME`` (a released finetuned model: social-mae-NAME from the registry/cache) or
    ``NAME=PATH`` (a head checkpoint from ``socialfeat finetune``, or a whole finetuned
    checkpoint)."""
    name, _, path = request.partition("=")
    name = name.strip()
    if not path:
        fetch(released_task_model(name), supply=f"--tasks {name}=PATH")
        return _from_finetuned_model(name, load_model(released_task_model(name)), backbone_info)
    obj = read_checkpoint(path)
    if obj.get("format") != HEAD_FORMAT:
        # an official (bare) state dict of a released task model, downloaded by hand (what the offline
        # error suggests): its task and labels are the registry entry's, its shapes are checked against it
        config = released_task_model(name) if name in released_tasks() else None
        return _from_finetuned_model(name, load_model(Path(path), config=config), backbone_info,
                                     bare=obj.get("format") != CHECKPOINT_FORMAT)
    if obj["backbone_sha256"] != backbone_info.sha256:
        raise HeadMismatchError(
            f"task {name!r}: head {path} was fitted on backbone {obj['backbone_name']} "
            f"(sha256 {obj['backbone_sha256'][:12]}) but extraction uses {backbone_info.name} "
            f"(sha256 {str(backbone_info.sha256)[:12]}); refit the head on this backbone")
    head = TaskHead(obj["dim"], len(obj["label_names"]))
    head.load_state_dict(obj["state_dict"])
    return Task(name, obj["task_type"], list(obj["label_names"]), head=head, embedding=obj["embedding"],
                source=str(path), fitted=obj.get("settings"))

