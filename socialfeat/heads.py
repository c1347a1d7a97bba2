"""Task predictions on top of the encoder: light heads on embeddings, and whole
finetuned models, behind one interface used by ``extract --tasks``.

A light head (``socialfeat finetune --probe``) is LayerNorm + Linear on one
embedding kind -- the same shape as the released models' ``mlp_head`` -- saved
with its task type, label names, embedding kind and the SHA-256 of the backbone
whose embeddings it was fitted on; it refuses to run on any other backbone.
"""

from __future__ import annotations

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

# what the stored numbers are, per task type
VALUES = {"classification": "softmax probabilities", "multilabel": "sigmoid probabilities",
          "regression": "scores on the training labels' scale"}


class HeadMismatchError(SocialfeatError, ValueError):
    """A head used with a backbone other than the one it was trained on."""


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
              embedding: str, backbone_sha256: str, backbone_name: str, metrics: dict | None = None) -> Path:
    """Write a head checkpoint atomically."""
    payload = {"format": HEAD_FORMAT, "task": task, "task_type": task_type, "label_names": list(label_names),
               "embedding": embedding, "backbone_sha256": backbone_sha256, "backbone_name": backbone_name,
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
                source=str(path))

