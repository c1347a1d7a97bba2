"""``extract --engine ray``: the same extraction spread over a Ray cluster.

CPU tasks (one per video) decode and preprocess with the local engine's own
``video_items``; they send batches of clips to encoder actors (one per GPU, or one
CPU actor when the cluster has no GPU) holding the model and task heads, and
return only the small per-clip vectors. The driver writes each finished video
through the same journal as the local engine and assembles the same HDF5.

A task whose worker dies is retried by Ray (``max_retries``); a video that still
fails is recorded as an error row, never dropped; a rerun tries it again (see
extract.worth_retrying). Each task reports its progress to a small ``Clock`` actor;
a task that makes none for longer than its video's limit (workers.stall_limit) is
cancelled and recorded as a timeout, so ``ray.wait`` never waits forever.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from socialfeat.encoder import (
    BatchEncoder,
    build_predictors,
    resolve_device,
    video_result,
)
from socialfeat.errors import MissingDependencyError
from socialfeat.media import use_decoder_threads
from socialfeat.models import load_model
from socialfeat.pipeline import (
    ClipItem,
    VideoDone,
    VideoStarted,
    error_row,
    guarded_video_items,
    video_row,
)
from socialfeat.store import Failure, VideoStatus
from socialfeat.workers import stall_limit

log = logging.getLogger(__name__)
TASK_RETRIES = 3


def _require_ray():
    try:
        import ray
    except ImportError:  # optional extra
        raise MissingDependencyError("--engine ray needs Ray: pip install 'socialfeat[ray]'") from None
    return ray


class EncoderWorker:
    """Holds the model and the task predictors; encodes batches of prepared clips."""

    def __init__(self, weights: str, tasks: list[str], batch_size: int, device: str, precision: str,
                 embeddings: tuple[str, ...]):
        dev = resolve_device(device)
        model = load_model(Path(weights)).to(dev).eval()  # a file (run_ray gets the fetched one)
        self.encoder = BatchEncoder(model, dev, batch_size, build_predictors(model, tasks, dev), precision,
                                    embeddings)

    def encode(self, items: list) -> list[tuple[dict, dict]]:
        return [(item.clip, vecs) for item, vecs in self.encoder.encode(list(items))]


class Clock:
    """When each running task last made progress, and how long it may go without (one actor,
    so that every task and the driver read the same clock)."""

    def __init__(self):
        self.tasks: dict[int, list] = {}  # pos -> [last progress, limit, waiting on the encoder]

    def beat(self, pos: int, limit: float, waiting: bool = False) -> None:
        self.tasks[pos] = [time.monotonic(), limit, waiting]

    def finished(self, pos: int) -> None:
        self.tasks.pop(pos, None)

    def overdue(self) -> list[tuple[int, float]]:
        now = time.monotonic()
        return [(pos, limit) for pos, (t, limit, waiting) in self.tasks.items() if not waiting and now - t > limit]


def prepare_and_encode(pos: int, ref, segments, spec, plan, encoder, batch_size: int, clock=None,
                       timeout: float | None = None):
    """Decode one video, have its clips encoded batch by batch; returns (VideoDone, encoded).
    Progress goes to ``clock`` (waiting on the encoder does not count against the video)."""
    import ray

    torch.set_num_threads(1)
    use_decoder_threads(1)  # the task holds one CPU of the cluster
    limit = stall_limit(None, timeout)

    def beat(waiting: bool = False) -> None:
        if clock is not None:
            clock.beat.remote(pos, limit, waiting)

    def encode(batch: list) -> list:
        beat(waiting=True)
        out = ray.get(encoder.encode.remote(batch))
        beat()
        return out

    beat()
    encoded, batch, done = [], [], None
    for item in guarded_video_items(pos, ref, spec, plan, segments):
        if isinstance(item, VideoStarted):
            limit = stall_limit(item.duration, timeout)
            beat()
        elif isinstance(item, ClipItem):
            batch.append(item)
            if len(batch) >= batch_size:
                encoded += encode(batch)
                batch = []
        else:
            done = item
    if batch:
        encoded += encode(batch)
    return done, encoded


def _failed(pos: int, ref, stage: str, message: str, failure: Failure) -> VideoDone:
    video = video_row(ref, VideoStatus.ERROR, f"{stage}: {message}")
    return VideoDone(pos, video, [error_row(ref, stage, message)], 0, failure)


def run_ray(jobs: list, weights: str, task_requests: list[str], spec, plan, batch_size: int, device: str,
            address: str | None, record, task_names: list[str], video_timeout: float | None = None) -> None:
    """Process ``jobs`` on Ray and hand each finished video to ``record(pos, VideoResult)``."""
    ray = _require_ray()

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    actor_opts: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1} if n_gpus and device != "cpu" else {"num_cpus": 0}
    Actor = ray.remote(max_restarts=2, max_task_retries=2, **actor_opts)(EncoderWorker)
    encoders = [Actor.remote(weights, task_requests, batch_size, "cuda" if "num_gpus" in actor_opts else "cpu",
                             plan.precision, plan.embeddings)
                for _ in range(max(1, n_gpus if "num_gpus" in actor_opts else 1))]
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(prepare_and_encode)
    clock = ray.remote(num_cpus=0)(Clock).remote()
    pending, timed_out = {}, {}
    for pos, ref, segs in jobs:
        ref_obj = task.remote(pos, ref, segs, spec, plan, encoders[pos % len(encoders)], batch_size, clock,
                              video_timeout)
        pending[ref_obj] = (pos, ref)
    by_pos = {pos: obj for obj, (pos, _) in pending.items()}
    checked = time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        if not ready or time.monotonic() - checked > 2.0:
            checked = time.monotonic()
            for pos, limit in ray.get(clock.overdue.remote()):
                if by_pos[pos] in pending and pos not in timed_out:
                    timed_out[pos] = limit
                    ray.cancel(by_pos[pos], force=True)
        if not ready:
            continue
        pos, ref = pending.pop(ready[0])
        clock.finished.remote(pos)
        try:
            done, encoded = ray.get(ready[0])
        except Exception as e:  # the task failed even after its retries, or was stopped
            if pos in timed_out:
                done = _failed(pos, ref, "timeout", f"no progress for {timed_out[pos]:.0f} s (stalled decoding: "
                               "a network file system or a pathological file); stopped", Failure.TIMEOUT)
            else:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                done = _failed(pos, ref, "worker", first, Failure.CRASH)
            encoded = []
        record(pos, video_result(done, encoded, task_names))
    for actor in [*encoders, clock]:
        ray.kill(actor)
