"""The pipeline without the model: what the main process costs per clip, and how close
``extract`` gets to pure decoding when the model costs nothing (issue #16's CPU targets).

One run, the same files for every figure:

- decode-only: PyAV decoding every stream of the files in W processes, one thread each
  (the decode limit of ``gpu_all.py``, on W cores);
- workers-only: socialfeat's decoding workers (W of them) with the GPU defaults (decoded
  frames handed over, bf16 inputs), their items received and dropped;
- extract, no-op encoder: ``socialfeat.extract`` end to end with W workers and an encoder
  that copies each clip out of its worker's slot (as the copy to a GPU does) and returns zeros
  without touching the model: hand-over, batching, journal, assembly; as a whole run, and
  between its first and its last batch (the pace once started, start-up set apart);
- the main process's CPU time per clip during that run after its first batch (everything but
  the workers); with a worker on every core, the whole run's best ratio given the main process's
  CPU time (taken from the decoders' cores); and the time from the start of ``extract`` until the model is ready with the
  workers decoding, and until its first batch, checkpoint reading aside.

    python benchmarks/pipeline_bench.py --videos 6 --seconds 40 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _media import decode_all_streams, encoded_video

import socialfeat.extract as extract_module
from socialfeat.encoder import BatchEncoder
from socialfeat.models import create_model, save_checkpoint
from socialfeat.pipeline import ClipItem, PlanSettings
from socialfeat.store import EMBEDDING_KINDS
from socialfeat.walk import find_videos
from socialfeat.workers import WorkerPool


class NoOpEncoder(BatchEncoder):
    """Takes and batches clips like the real encoder, returns zeros: the model's cost taken out."""

    first_batch_at: float | None = None  # wall clock and main-process CPU time at the first batch
    first_batch_clips = 0
    last_batch_at = 0.0
    cpu_at_first_batch = 0.0
    clips = 0
    ready_at = 0.0  # the model on its device, the workers started

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        NoOpEncoder.ready_at = time.perf_counter()

    def _launch_batch(self, items: list[ClipItem]):
        if NoOpEncoder.first_batch_at is None:
            NoOpEncoder.first_batch_at, NoOpEncoder.cpu_at_first_batch = time.perf_counter(), cpu_seconds()
            NoOpEncoder.first_batch_clips = len(items)
        NoOpEncoder.last_batch_at = time.perf_counter()
        NoOpEncoder.clips += len(items)
        dim = self.model.norm.normalized_shape[0]
        zeros = {k: np.zeros(dim, np.float32) for k in EMBEDDING_KINDS}
        zeros.update({t.name: np.zeros(len(t.label_names), np.float32) for t in self.tasks})
        return Finished([(it, zeros) for it in items])


class Finished:
    def __init__(self, results):
        self.results = results

    def collect(self):
        return self.results


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # this process's threads, not its children
    return r.ru_utime + r.ru_stime


def timed_torch_load():
    """torch.load, with the seconds it spends added up (the checkpoint read is set aside)."""
    spent = [0.0]
    original = torch.load

    def load(*a, **kw):
        t = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            spent[0] += time.perf_counter() - t
    return load, spent, original


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with ProcessPoolExecutor(args.workers) as pool:
            files = list(pool.map(encoded_video, [tmp / "videos" / f"v{i:03d}.mp4" for i in range(args.videos)],
                                  [args.seconds] * args.videos, [args.size] * args.videos,
                                  [30] * args.videos, range(args.videos)))
        model = create_model(args.arch)
        ckpt = save_checkpoint(model, tmp / "model.pt")
        spec = model.info.preprocess
        n_clips = args.videos * int(args.seconds // spec.clip_seconds)
        figures = {"videos": args.videos, "seconds_each": args.seconds, "size": args.size, "workers": args.workers,
                   "batch": args.batch_size, "clips": n_clips, "runs": []}
        for repeat in range(args.repeats):  # interleaved: each repeat measures all three
            t = time.perf_counter()
            with ProcessPoolExecutor(args.workers) as pool:
                decode_cpu = sum(pool.map(decode_all_streams, [str(f) for f in files]))  # (seconds each took)
            decode = n_clips / (time.perf_counter() - t)

            refs = find_videos([tmp / "videos"])
            plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan",
                                precision="bf16", raw_frames=True)
            t = time.perf_counter()
            got = sum(isinstance(item, ClipItem) for item in
                      WorkerPool([(i, r, None) for i, r in enumerate(refs)], spec, plan, args.workers, lend_tensors=True))
            workers_only = got / (time.perf_counter() - t)

            load, spent, original = timed_torch_load()
            NoOpEncoder.first_batch_at, NoOpEncoder.clips = None, 0
            extract_module.BatchEncoder, torch.load = NoOpEncoder, load
            try:
                cpu0, t = cpu_seconds(), time.perf_counter()
                summary = extract_module.extract([tmp / "videos"], tmp / f"out{repeat}.h5", weights=ckpt,
                                                 batch_size=args.batch_size, workers=args.workers, device="cpu",
                                                 precision="bf16", frames_on_device=True, progress=False)
                wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu0
            finally:
                extract_module.BatchEncoder, torch.load = BatchEncoder, original
            row = {"decode_only": round(decode, 1), "workers_only": round(workers_only, 1),
                   "extract_noop": round(summary.n_clips / wall, 1),
                   "extract_noop_vs_decode_only": round(summary.n_clips / wall / decode, 3),
                   # between the first and the last batch: the pipeline's pace once started (start-up is below)
                   "extract_noop_steady_vs_decode_only": round(
                       (NoOpEncoder.clips - NoOpEncoder.first_batch_clips)
                       / (NoOpEncoder.last_batch_at - NoOpEncoder.first_batch_at) / decode, 3)
                   if NoOpEncoder.clips > NoOpEncoder.first_batch_clips else None,  # (one batch: no pace to tell)
                   "workers_only_vs_decode_only": round(workers_only / decode, 3),
                   # after the first batch: the cost that grows with the corpus (start-up is the next figure)
                   "main_process_ms_per_clip": round(1000 * (cpu0 + cpu - NoOpEncoder.cpu_at_first_batch)
                                                     / (summary.n_clips - args.batch_size), 2),
                   "main_process_cpu_s": round(cpu, 2),
                   # with a worker on every core, the main process's CPU time comes out of the decoders'
                   # cores: the whole run's best ratio then (a GPU server keeps a core for it)
                   "cores_bound_vs_decode_only": round(decode_cpu / (decode_cpu + cpu), 3)
                   if args.workers >= (os.cpu_count() or 1) else None,
                   # set-up (checkpoint read aside), then that plus decoding the first batch's clips
                   "start_to_ready_s": round(NoOpEncoder.ready_at - t - spent[0], 2),
                   "start_to_first_batch_s": round(NoOpEncoder.first_batch_at - t - spent[0], 2),
                   "checkpoint_read_s": round(spent[0], 2)}
            figures["runs"].append(row)
            print(json.dumps(row), flush=True)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="social-mae", help="sets the preprocessing (the tiny test model samples twice the "
                   "frames per second) and the checkpoint read at the start")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--size", default="640x480")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    figures = run(args)
    best = {}
    for k in figures["runs"][0]:
        values = [r[k] for r in figures["runs"] if r[k] is not None]
        pick = max if "per_clip" not in k and not k.endswith("_s") else min
        best[k] = pick(values) if values else None
    figures["best"] = best
    print("best of runs:", json.dumps(best))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
