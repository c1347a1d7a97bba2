"""How close one decoding worker gets to pure decoding: the ceiling of end-to-end extraction.

With a model that never waits (a GPU), ``socialfeat extract`` can go no faster than its
workers, and each worker does more than decode: the sampled frames are converted to RGB
(and, without a GPU, resized as the reference does: float bicubic, no antialias), and each
clip's log-mel features are computed. For each frame size and encoding (x264 as it comes,
with B-frames, and without B-frames as phones mostly record) this prints, single threaded
and pinned to one core, on the same file, each figure the best of interleaved repeats:

- ffmpeg decoding the file (video and audio) to null;
- PyAV decoding every packet of every stream (``gpu_all.pyav_decode``: the decode limit per
  core that issue #16 measures end to end against; its target is 0.9 of it);
- PyAV decoding the video packets only;
- the worker (``pipeline.video_items``, one decoder thread as on a GPU server) transforming
  frames itself, and handing over decoded frames (``raw_frames``, the default with a GPU)
  with and without skipping non-reference frames (``media.skip_nonref``);
- for comparison, the sampled frames resized by swscale at decode time (what "decoding
  at the target size" would cost) and how far its pixels are from the reference transform.

    python benchmarks/worker_bench.py --sizes 640x480,1280x720,1920x1080 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import av
import torch
from _media import ENCODINGS, make_videos

from socialfeat import media
from socialfeat.pipeline import ClipItem, PlanSettings, video_items
from socialfeat.preprocess import frames_tensor, resolve_spec
from socialfeat.walk import VideoRef


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Least disturbed time of each function (seconds), their runs interleaved so that a busy
    spell of the shared machine does not fall on one of them only."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: min(ts) for name, ts in times.items()}


def decoders(path: Path) -> dict:
    """ffmpeg, PyAV on every stream (gpu_all's decode limit) and PyAV on the video only."""
    def ffmpeg():
        subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"], check=True)

    def pyav_all():
        with av.open(str(path)) as c:
            for stream in c.streams:
                stream.thread_count = 1
            for _ in c.decode(*c.streams):
                pass

    def pyav_video():
        with av.open(str(path)) as c:
            c.streams.video[0].thread_count = 1
            for _ in c.decode(video=0):
                pass

    return {"ffmpeg": ffmpeg, "pyav_all": pyav_all, "pyav_video": pyav_video}


def workers(ref: VideoRef, spec, plan: PlanSettings) -> dict:
    """The worker transforming frames itself (skipping non-reference frames), and handing over
    decoded frames with and without skipping."""
    def run(raw: bool, skip: bool):
        def worker():
            media.skip_nonref = skip
            for _ in video_items(0, ref, spec, replace(plan, raw_frames=raw), None):
                pass
            media.skip_nonref = True
        return worker

    return {"worker": run(False, True), "raw_noskip": run(True, False), "raw": run(True, True)}


def swscale_comparison(path: Path, spec, repeats: int) -> dict[str, float]:
    """Per-frame cost of the reference transform vs swscale's resize at decode time, and how
    far swscale's pixels are from the reference's."""
    with av.open(str(path)) as c:
        frames = [f for _, f in zip(range(16), c.decode(video=0))]
    s = spec.image_size

    def exact():
        return torch.cat([frames_tensor(f.to_ndarray(format="rgb24")[None], spec) for f in frames])

    def sws():
        return torch.cat([frames_tensor(f.reformat(s, s, "rgb24", interpolation="BICUBIC").to_ndarray()[None], spec)
                          for f in frames])

    t = best_of({"exact": exact, "sws": sws}, repeats)
    levels = (exact() - sws()).abs() * torch.tensor(spec.image_std).view(1, 3, 1, 1) * 255
    return {"frame_exact_ms": t["exact"] / len(frames) * 1e3, "frame_swscale_ms": t["sws"] / len(frames) * 1e3,
            "swscale_mean_levels": levels.mean().item(), "swscale_max_levels": levels.max().item()}


def measure(path: Path, spec, plan: PlanSettings, repeats: int) -> dict:
    ref = VideoRef(path.resolve(), path.name)
    n_clips = sum(isinstance(it, ClipItem) for it in video_items(0, ref, spec, plan, None))
    t = best_of({**decoders(path), **workers(ref, spec, plan)}, repeats)
    row = {"clips": n_clips, **{f"{k}_s": v for k, v in t.items()}}
    row.update({f"{k}_clips_per_s": n_clips / v for k, v in t.items()})
    for k in ("worker", "raw_noskip", "raw"):
        row[f"{k}_vs_pyav_all"] = t["pyav_all"] / t[k]
        row[f"{k}_vs_ffmpeg"] = t["ffmpeg"] / t[k]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="social-mae", help="registry name or family whose preprocessing is used")
    p.add_argument("--sizes", default="640x480,1280x720,1920x1080")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encodings", default=",".join(ENCODINGS), help=f"of {', '.join(ENCODINGS)}")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--no-swscale", action="store_true", help="skip the swscale comparison")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(1)  # as inside a worker
    media.use_decoder_threads(1)  # as in each worker on a GPU server (a worker per core but one)
    if hasattr(os, "sched_setaffinity"):  # one core for everything, ffmpeg included: a fair per-core figure
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    spec = resolve_spec(args.model)
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan")
    rows = []
    print(f"# {spec.family} preprocessing ({spec.num_frames} frames per {spec.clip_seconds:g}-s clip), one thread, "
          f"{args.fps} fps, best of {args.repeats}; clips/s, and the share of PyAV decoding all streams")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            for encoding in args.encodings.split(","):
                path = make_videos(Path(tmp) / f"{size}_{encoding}", 1, args.seconds, size, args.fps, encoding)[0]
                row = {"size": size, "encoding": encoding, **measure(path, spec, plan, args.repeats)}
                if not args.no_swscale and encoding == args.encodings.split(",")[0]:
                    row.update(swscale_comparison(path, spec, args.repeats))
                rows.append(row)
                print(report(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def report(row: dict) -> str:
    c = "clips_per_s"
    text = (f"{row['size']:>9s} {row['encoding']:>7s}: ffmpeg {row['ffmpeg_' + c]:.1f}, PyAV all streams "
            f"{row['pyav_all_' + c]:.1f}, PyAV video {row['pyav_video_' + c]:.1f}; "
            f"worker transforming (skipping) {row['worker_' + c]:.1f} "
            f"({row['worker_vs_pyav_all']:.2f}), raw frames {row['raw_noskip_' + c]:.1f} "
            f"({row['raw_noskip_vs_pyav_all']:.2f}), raw frames + skipping {row['raw_' + c]:.1f} "
            f"({row['raw_vs_pyav_all']:.2f}) [{row['clips']} clips]")
    if "frame_exact_ms" in row:
        text += (f"; per sampled frame: reference transform {row['frame_exact_ms']:.1f} ms, swscale resize "
                 f"{row['frame_swscale_ms']:.1f} ms (differs by {row['swscale_mean_levels']:.2f} levels on average, "
                 f"{row['swscale_max_levels']:.0f} at most)")
    return text


if __name__ == "__main__":
    main()
