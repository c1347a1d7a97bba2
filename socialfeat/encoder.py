"""The batched encoder that every engine uses: device and precision policy, the
model and its task predictors over batches of prepared clips, and the per-video
result record built from what comes back.

Batches span videos (a short video does not leave the model idle); every task
reuses the batch already decoded and preprocessed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from socialfeat.choices import EXTRACT_CHOICES
from socialfeat.errors import DeviceError, UsageError
from socialfeat.heads import Task, load_task, outputs_to_values
from socialfeat.model_call import ModelCall
from socialfeat.model_inputs import model_video
from socialfeat.models.fast import fast_precision, is_quantized, quantize_linears
from socialfeat.pipeline import ClipItem, VideoDone
from socialfeat.store import EMBEDDING_KINDS, VideoResult, VideoStatus


def resolve_device(device: str) -> torch.device:
    """'auto': the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


PRECISIONS = EXTRACT_CHOICES["precision"]
SPARE_SHAPES = 4  # CPU: shapes of clip tensors kept for reuse (audio, frames, and a few frame sizes)


def resolve_precision(precision: str, dev: torch.device) -> str:
    """The precision a run uses: 'fp32', 'bf16' (autocast) or 'int8' (int8 linear layers, CPU).

    'auto': bf16 autocast on CUDA (embedding cosine >= 0.999 against fp32, several times
    faster), exact fp32 on the CPU. 'fast': the fastest approximate precision of the device
    (bf16 on CUDA and on CPUs with AMX, int8 on other CPUs; models/fast.py). bf16 on a CPU
    without AMX is emulated and slower than fp32; int8 exists on the CPU only.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if dev.type == "cuda" else "fp32"
    if precision == "fast":
        return fast_precision(dev)
    if precision == "int8" and dev.type != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU only, not on {dev.type}; use bf16 (or fast) there")
    return precision


def resolve_embeddings(embeddings: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'all' or some of joint/audio/visual (a comma-separated string or a sequence), in the
    output's order. Kinds not asked for are not computed and are NaN in the output."""
    names = embeddings.split(",") if isinstance(embeddings, str) else list(embeddings)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return EMBEDDING_KINDS
    unknown = sorted(set(names) - set(EMBEDDING_KINDS))
    if unknown or not names:
        raise UsageError(f"embeddings must be 'all' or some of {', '.join(EMBEDDING_KINDS)}, got {embeddings!r}")
    return tuple(k for k in EMBEDDING_KINDS if k in names)


def prepare_models(models: list, precision: str) -> None:
    """Convert the models that will run (extraction model, task models) for ``precision``:
    int8 replaces their trunk's linear layers in place; other precisions leave them as they are."""
    if precision != "int8":
        return
    seen = set()
    for model in models:
        if model is not None and id(model) not in seen and not is_quantized(model):
            quantize_linears(model)
        seen.add(id(model))


class BatchEncoder:
    """Batches clips (across videos) through the model and the task predictors, and
    routes results back. Every task reuses the batch already decoded and preprocessed.

    ``precision`` 'int8' converts the model and the task models in place (prepare_models).
    ``embeddings``: the kinds to compute; the others are NaN (the unified passes they need
    are skipped unless a task head reads them). ``compile``: torch.compile the model (ModelCall).

    On a GPU the work overlaps: each clip's tensors are copied to the device as it arrives
    (on a stream of their own, so the copy does not wait for the model), and a batch's results
    come back while the next batch is gathered. ``add`` and ``flush`` therefore return the
    results of earlier batches; every clip's result comes back once, by the final ``flush``.
    """

    def __init__(self, model, device: torch.device, batch_size: int, tasks: list[Task], precision: str = "fp32",
                 embeddings: tuple[str, ...] = EMBEDDING_KINDS, compile: bool = False):
        self.model, self.device, self.batch_size, self.tasks = model, device, batch_size, tasks
        self.spec = model.info.preprocess
        self.bf16 = precision == "bf16"
        self.embeddings = resolve_embeddings(embeddings)
        self.kinds = self._kinds_to_compute()
        prepare_models([model] + [t.model for t in tasks], precision)
        self.call = ModelCall(model, device, precision, batch_size, self.kinds, compile=compile)
        self.buffer: list[ClipItem] = []  # the batch being gathered, tensors already where the model runs
        self.in_flight: _Launched | None = None  # the batch the device is computing
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.spare: dict[tuple, list[torch.Tensor]] = {}  # CPU: tensors to copy clips into, by shape and dtype

    def _kinds_to_compute(self) -> tuple[str, ...]:
        """The embeddings asked for, plus those the task heads read (the model's own head reads joint)."""
        needed = set(self.embeddings)
        for task in self.tasks:
            if task.head is not None:
                needed.add(task.embedding)
            elif task.model is self.model:
                needed.add("joint")
        return tuple(k for k in EMBEDDING_KINDS if k in needed)

    def add(self, item: ClipItem) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Take ``item``: its tensors are copied now, to the GPU or into tensors of the encoder's own
        (they may be views of a worker's shared slot, written again once the next item is asked
        for: WorkerPool's lend_tensors). Returns the clips finished so far."""
        self.buffer.append(self._take(item))
        return self._launch() if len(self.buffer) >= self.batch_size else []

    def flush(self) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Encode what is buffered (a last, partial batch) and return every clip not yet returned."""
        done = self._launch() if self.buffer else []
        return done + self._collect_in_flight()

    def encode(self, items: list[ClipItem]) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Embeddings and predictions of ``items`` (NaN where a clip has no audio or is skipped), at once."""
        items = [self._take(it) for it in items]
        launched = self._launch_batch(items)
        self._give_back(items)
        return launched.collect()

    # ------------------------------------------------------------ internals
    def _take(self, item: ClipItem) -> ClipItem:
        """The item with its tensors copied where the model runs: to the GPU, or on the CPU into
        tensors kept for the purpose (reused batch after batch: a fresh tensor per clip cost 4 ms
        of page faults each in pipeline_bench, more than the copy)."""
        if self.copy_stream is None:
            return replace(item, audio=self._copy_on_cpu(item.audio), video=self._copy_on_cpu(item.video))

        def copy(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(self.device, non_blocking=True)
        with torch.cuda.stream(self.copy_stream):  # (from pageable memory: returns once the bytes are read)
            return replace(item, audio=copy(item.audio), video=copy(item.video))

    def _copy_on_cpu(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """A copy of ``x`` in a tensor of the encoder's, made on this thread by numpy: torch's
        ``copy_`` wakes its OpenMP threads, which then spin on the cores the decoding workers need
        (the model's process used 2x the CPU time of the copies in pipeline_bench)."""
        if x is None:
            return None
        spare = self.spare.get((x.shape, x.dtype))
        out = spare.pop() if spare else torch.empty(x.shape, dtype=x.dtype)
        np.copyto(_as_numpy(out), _as_numpy(x.contiguous()))
        return out

    def _give_back(self, items: list[ClipItem]) -> None:
        """On the CPU, a launched batch is computed: its clips' tensors can take the next clips."""
        if self.copy_stream is None:
            for it in items:
                for x in (it.audio, it.video):
                    if x is not None:
                        key = (x.shape, x.dtype)
                        self.spare[key] = self.spare.pop(key, []) + [x]  # (the most recent shapes last)
            while len(self.spare) > SPARE_SHAPES:  # frames of many sizes (raw frames): the oldest go
                del self.spare[next(iter(self.spare))]

    def _launch(self) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Start the gathered batch; return the results of the one before it."""
        items, self.buffer = self.buffer, []
        launched = self._launch_batch(items)
        self._give_back(items)
        done = self._collect_in_flight()
        self.in_flight = launched
        return done

    def _collect_in_flight(self) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        launched, self.in_flight = self.in_flight, None
        return launched.collect() if launched is not None else []

    def _launch_batch(self, items: list[ClipItem]) -> _Launched:
        """Queue the model on ``items`` (tensors on the device); results are copied back without waiting."""
        launched = _Launched(items)
        if not items:
            return launched
        if self.copy_stream is not None:  # the model's stream waits for the copies, and their memory
            compute = torch.cuda.current_stream(self.device)  # is not reused before it is done with it
            compute.wait_stream(self.copy_stream)
            for it in items:
                for x in (it.audio, it.video):
                    if x is not None:
                        x.record_stream(compute)
        with_audio = [i for i, it in enumerate(items) if it.audio is not None and not it.skip]
        without = [i for i, it in enumerate(items) if it.audio is None and not it.skip]
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with torch.inference_mode():
            for idx, use_audio in ((with_audio, True), (without, False)):
                if not idx:
                    continue
                # inputs are finished in fp32 (frames resized here, see model_video), outside autocast
                video = torch.stack([model_video(items[i].video, self.spec, self.device) for i in idx])
                audio = torch.stack([items[i].audio for i in idx]) if use_audio else None
                enc = self.call(audio, video)  # fp32 embeddings, whatever the precision
                for kind in self.embeddings:
                    launched.add(kind, idx, getattr(enc, kind))
                for task in self.tasks:
                    with autocast:
                        launched.add(task.name, idx, self._predict(task, enc, audio, video))
        launched.dims = {k: self.model.norm.normalized_shape[0] for k in EMBEDDING_KINDS}
        launched.dims.update({t.name: len(t.label_names) for t in self.tasks})
        launched.copied_back(self.device)
        return launched

    def _predict(self, task: Task, enc, audio: torch.Tensor | None, video: torch.Tensor) -> torch.Tensor | None:
        """A task's values; the extraction model's own head reuses the logits of the pass
        just made instead of running the model again."""
        if task.head is None and task.model is self.model:
            return None if enc.logits is None else outputs_to_values(enc.logits, task.task_type)
        return task.predict(enc, audio, video)


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous tensor as a numpy array (bf16 as int16: numpy has no bf16)."""
    return (x.view(torch.int16) if x.dtype == torch.bfloat16 else x).numpy()


class _Launched:
    """A batch queued on the device: its outputs on their way back to the CPU."""

    def __init__(self, items: list[ClipItem]):
        self.items = items
        self.parts: list[tuple[str, list[int], torch.Tensor]] = []
        self.dims: dict[str, int] = {}
        self.event = None

    def add(self, name: str, idx: list[int], values: torch.Tensor | None) -> None:
        if values is not None:  # (to the CPU without waiting: into pinned memory when it comes from a GPU)
            self.parts.append((name, idx, values.float().to("cpu", non_blocking=True)))

    def copied_back(self, device: torch.device) -> None:
        if device.type == "cuda":
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(device))

    def collect(self) -> list[tuple[ClipItem, dict[str, np.ndarray]]]:
        """Wait for the device; each clip with its vectors (NaN where a clip has none)."""
        if self.event is not None:
            self.event.synchronize()
        out = {k: np.full((len(self.items), d), np.nan, np.float32) for k, d in self.dims.items()}
        for name, idx, values in self.parts:
            out[name][idx] = values.numpy()
        stripped = [replace(it, audio=None, video=None) for it in self.items]  # the device memory can go
        return [(it, {k: v[i] for k, v in out.items()}) for i, it in enumerate(stripped)]


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
    for p in predictors:  # a name is an HDF5 dataset (predictions/<task>): '/' would nest it, '' is refused late
        if not p.name or "/" in p.name:
            raise UsageError(f"task {p.name!r} ({p.source or 'the model'}): a task name must be non-empty and "
                             "without '/'; give it another name (--tasks NAME=PATH)")
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
