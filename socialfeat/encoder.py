"""The batched encoder that every engine uses: device and precision policy, the
model and its task predictors over batches of prepared clips, and the per-video
result record built from what comes back.

Batches span videos (a short video does not leave the model idle); every task
reuses the batch already decoded and preprocessed.
"""

from __future__ import annotations

import numpy as np
import torch

from socialfeat.errors import DeviceError, UsageError
from socialfeat.heads import Task, load_task
from socialfeat.model_inputs import model_video
from socialfeat.pipeline import ClipItem, VideoDone
from socialfeat.store import EMBEDDING_KINDS, VideoResult, VideoStatus


def resolve_device(device: str) -> torch.device:
    """'auto': the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, dev: torch.device) -> str:
    """'auto': bf16 autocast on CUDA (embedding cosine >= 0.999 against fp32, several
    times faster), exact fp32 on the CPU (bf16 is opt-in there: fast only on CPUs with
    bf16 matrix units)."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if dev.type == "cuda" else "fp32"
    return precision


class BatchEncoder:
    """Batches clips (across videos) through the model and the task predictors, and
    routes results back. Every task reuses the batch already decoded and preprocessed."""

    def __init__(self, model, device: torch.device, batch_size: int, tasks: list[Task], precision: str = "fp32"):
        self.model, self.device, self.batch_size, self.tasks = model, device, batch_size, tasks
        self.spec = model.info.preprocess
        self.bf16 = precision == "bf16"
        self.buffer: list[ClipItem] = []

    def add(self, item: ClipItem) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        self.buffer.append(item)
        return self.flush() if len(self.buffer) >= self.batch_size else []

    def _to(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def flush(self) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Encode what is buffered (a last, partial batch)."""
        items, self.buffer = self.buffer, []
        return self.encode(items)

    def encode(self, items: list[ClipItem]) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Embeddings and predictions of ``items`` (NaN where a clip has no audio or is skipped)."""
        if not items:
            return []
        dim = self.model.norm.normalized_shape[0]
        out = {k: np.full((len(items), dim), np.nan, np.float32) for k in EMBEDDING_KINDS}
        for task in self.tasks:
            out[task.name] = np.full((len(items), len(task.label_names)), np.nan, np.float32)
        with_audio = [i for i, it in enumerate(items) if it.audio is not None and not it.skip]
        without = [i for i, it in enumerate(items) if it.audio is None and not it.skip]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode():
            for idx, use_audio in ((with_audio, True), (without, False)):
                if not idx:
                    continue
                # inputs are finished in fp32 (frames resized here, see model_video), outside autocast
                video = torch.stack([model_video(items[i].video, self.spec, self.device) for i in idx])
                audio = self._to(torch.stack([items[i].audio for i in idx])) if use_audio else None
                with autocast:
                    enc = self.model.encode(audio, video)
                for kind in EMBEDDING_KINDS:
                    val = getattr(enc, kind)
                    if val is not None:
                        out[kind][idx] = val.float().cpu().numpy()
                for task in self.tasks:
                    with autocast:
                        values = task.predict(enc, audio, video)
                    if values is not None:
                        out[task.name][idx] = values.float().cpu().numpy()
        return [(it, {k: v[i] for k, v in out.items()}) for i, it in enumerate(items)]


def build_predictors(net, tasks: list[str], dev: torch.device) -> list[Task]:
    """The model's own head (finetuned weights) followed by every ``--tasks`` item."""
    info = net.info
    predictors = [load_task(t, info).to(dev) for t in tasks]
    if info.task and info.label_names:
        predictors.insert(0, Task(info.task_name or "task", info.task, list(info.label_names), model=net,
                                  source=str(info.source)))
    names = [p.name for p in predictors]
    if len(set(names)) != len(names):
        raise UsageError(f"task names must be unique, got {names}")
    return predictors


def video_result(done: VideoDone, encoded: list[tuple[dict, dict[str, np.ndarray]]],
                 task_names: list[str]) -> VideoResult:
    """One video's journal entry from its record and its encoded clips (any engine)."""
    if done.video["status"] == VideoStatus.ERROR:  # anything already encoded for it is discarded
        encoded = []
    encoded = sorted(encoded, key=lambda pair: (pair[0]["clip_index"], pair[0].get("track", 0)))
    res = VideoResult(video=dict(done.video, n_clips=len(encoded)), errors=done.errors,
                      clips=[row for row, _ in encoded], failure=done.failure)
    if encoded:
        res.embeddings = {k: np.stack([v[k] for _, v in encoded]) for k in EMBEDDING_KINDS}
        res.predictions = {t: np.stack([v[t] for _, v in encoded]) for t in task_names}
    return res
