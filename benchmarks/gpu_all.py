"""Every GPU measurement of issue #8 in one short run (a lent GPU machine has no network).

Writes ``$OUT/gpu_figures.json`` (or ./gpu_figures.json) after every section, so a run cut
short still returns what it measured:

1. encode clips/s, eager: fp32, bf16 autocast, bf16 weights; batch 1/16/64; peak memory;
2. embedding cosine of bf16 (autocast and weights) against fp32;
3. encode clips/s with torch.compile (bf16 weights, batch 64): default mode and
   'reduce-overhead' (CUDA graphs), with the compile time;
4. pretraining step rate (bf16 autocast, batch 16);
5. end to end: ``socialfeat.extract`` on generated H.264 files against the decode limit
   (the same files decoded by PyAV, one process per core, one thread each), with the sampled
   frames resized on the GPU (default there) and in the workers.

On the GPU machine (PyAV travels as a wheel, see docs/performance.md):
  PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_all.py
A quick check of the script on a CPU:
  python benchmarks/gpu_all.py --device cpu --arch social-mae-tiny --seconds 0.2 --e2e-videos 2 --e2e-seconds 6
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretraining.objective import PretrainObjective  # noqa: E402
from socialfeat.encoder import BatchEncoder  # noqa: E402
from socialfeat.media import available_cores  # noqa: E402
from socialfeat.models import create_model, save_checkpoint  # noqa: E402


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, seconds: float, dev: torch.device) -> float:
    fn()
    sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    sync(dev)
    return (time.perf_counter() - t0) / n


def peak_gib(dev: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


class Report:
    def __init__(self, target: Path, **head):
        self.target, self.data = target, dict(head)

    def __setitem__(self, key, value) -> None:
        self.store(key, value)
        print(json.dumps({key: value}), flush=True)

    def store(self, key, value) -> None:
        """Write without printing (a section that prints its rows as they come)."""
        self.data[key] = value
        self.target.write_text(json.dumps(self.data, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per encode figure")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--e2e-videos", type=int, default=24, help="videos at the first size (half, at least one per "
                   "core, at the others)")
    p.add_argument("--e2e-seconds", type=float, default=120.0)
    p.add_argument("--e2e-sizes", default="640x480,1280x720")
    p.add_argument("--sweep-videos", type=int, default=8, help="videos of the worker sweep (1/4/8/default workers)")
    p.add_argument("--workers", type=int, default=0, help="extract workers [default: cores - 1]")
    args = p.parse_args()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    report = Report(Path(os.environ.get("OUT", ".")) / "gpu_figures.json", device=name, torch=torch.__version__,
                    arch=args.arch, cpus=available_cores())
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 figures are true fp32

    model = create_model(args.arch).to(dev).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    g = torch.Generator(device="cpu").manual_seed(0)
    a64 = torch.randn(64, kw["audio_length"], 128, generator=g).to(dev)
    v64 = torch.randn(64, *vshape, generator=g).to(dev)

    measure_encode(model, a64, v64, dev, args, report)
    measure_pretrain(args.arch, a64, v64, dev, args.seconds, report)
    measure_end_to_end(model, dev, args, report)


def measure_encode(model, a64: torch.Tensor, v64: torch.Tensor, dev: torch.device, args, report: Report) -> None:
    """Sections 1-3: eager encode, bf16 agreement, torch.compile."""
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)

    def variant(kind: str, net=None):
        net = net or (model_bf16 if kind == "bf16_weights" else model)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=kind == "bf16_autocast")
        cast = (lambda x: x.to(torch.bfloat16)) if kind == "bf16_weights" else (lambda x: x)

        def run(bs: int, fn=None):
            with torch.inference_mode(), amp:
                return (fn or net.encode)(cast(a64[:bs]), cast(v64[:bs]))
        return run

    # 1. eager encode
    rows = []
    for kind in ("fp32", "bf16_autocast", "bf16_weights"):
        run = variant(kind)
        for bs in (1, 16, 64):
            reset_peak(dev)
            sec = timed(lambda: run(bs), args.seconds, dev)
            rows.append({"kind": kind, "batch": bs, "clips_per_s": round(bs / sec, 2), "peak_gib": peak_gib(dev)})
            print(rows[-1], flush=True)
    report["encode_eager"] = rows

    # 2. bf16 agreement with fp32
    with torch.inference_mode():
        full = variant("fp32")(16)
        cos = {}
        for kind in ("bf16_autocast", "bf16_weights"):
            half = variant(kind)(16)
            cos[kind] = {k: float(F.cosine_similarity(getattr(full, k), getattr(half, k).float(), dim=-1).min())
                         for k in ("joint", "audio", "visual")}
    report["bf16_cosine_min"] = cos

    # 3. torch.compile
    if not args.skip_compile:
        rows = []
        for mode in ("default", "reduce-overhead"):
            try:
                compiled = torch.compile(model_bf16.encode, mode=mode, dynamic=False)
                run = variant("bf16_weights")
                t0 = time.perf_counter()
                run(64, compiled)
                run(64, compiled)
                sync(dev)
                compile_s = time.perf_counter() - t0
                reset_peak(dev)
                sec = timed(lambda: run(64, compiled), args.seconds, dev)
                rows.append({"mode": mode, "batch": 64, "clips_per_s": round(64 / sec, 2), "compile_s": round(compile_s, 1),
                             "peak_gib": peak_gib(dev)})
            except Exception as e:  # report, keep measuring
                rows.append({"mode": mode, "error": f"{type(e).__name__}: {e}"[:300]})
            print(rows[-1], flush=True)
            torch._dynamo.reset()
        report["encode_compiled_bf16_weights"] = rows



def measure_pretrain(arch: str, a64: torch.Tensor, v64: torch.Tensor, dev: torch.device, seconds: float,
                     report: Report) -> None:
    """Section 4: training steps per second."""
    # 4. pretraining step rate
    train = create_model(arch).to(dev).train()
    objective = PretrainObjective(train)
    opt = torch.optim.Adam(train.parameters(), lr=5e-5)
    bs = 16 if dev.type == "cuda" else 2

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = objective(a64[:bs], v64[:bs], torch.randn(bs, train.num_audio_tokens, device=dev),
                             torch.randn(bs, train.num_video_tokens, device=dev))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    reset_peak(dev)
    report["pretrain"] = {"batch": bs, "clips_per_s": round(bs / timed(step, seconds, dev), 2),
                          "peak_gib": peak_gib(dev)}



def measure_end_to_end(model, dev: torch.device, args, report: Report) -> None:
    """Section 5: ``extract`` with the defaults a user gets against the decode limit of the same cores, per frame
    size; at the first size also the worker sweep (on a subset), the hand-over of issue #16 against the one before
    it (a shared-memory descriptor per tensor), and a no-op encoder (the pipeline alone)."""
    import socialfeat.extract as extract_module
    from _media import decode_all_streams, encoded_video
    from pipeline_bench import NoOpEncoder, cpu_seconds

    from socialfeat.workers import WorkerPool

    cores = available_cores()
    default_workers = max(1, cores - 1)  # extract's own default with a GPU
    clip_s = model.info.preprocess.clip_seconds
    results = {"cores": cores, "sizes": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_checkpoint(model.cpu(), tmp / "model.pt")
        if dev.type == "cuda":
            torch.cuda.empty_cache()

        def run(name: str, folder: Path, n_clips_expected: int, decode_rate: float, **kw) -> dict:
            reset_peak(dev)
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            summary = extract_module.extract([folder], tmp / f"out_{name}_{len(results['sizes'])}.h5", weights=ckpt,
                                             device=args.device, progress=False, **kw)
            sec, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            row = {"run": name, "workers": kw.get("workers", default_workers), "clips": summary.n_clips,
                   "clips_expected": n_clips_expected, "seconds": round(sec, 2),
                   "clips_per_s": round(summary.n_clips / sec, 2),
                   "vs_decode_limit": round(summary.n_clips / sec / decode_rate, 3),
                   "main_process_cpu_ms_per_clip": round(1000 * cpu / max(1, summary.n_clips), 2),
                   "peak_gib": peak_gib(dev)}
            print(row, flush=True)
            return row

        for i, size in enumerate(args.e2e_sizes.split(",")):
            n = args.e2e_videos if i == 0 else max(cores, args.e2e_videos // 2)
            folder = tmp / f"videos{size}"
            t0 = time.perf_counter()
            with ProcessPoolExecutor(cores) as pool:
                files = list(pool.map(encoded_video, [folder / f"v{j:03d}.mp4" for j in range(n)],
                                      [args.e2e_seconds] * n, [size] * n, [30] * n, range(n)))
            made_s = time.perf_counter() - t0
            n_clips = n * int(args.e2e_seconds // clip_s)
            t0 = time.perf_counter()
            with ProcessPoolExecutor(cores) as pool:
                list(pool.map(decode_all_streams, [str(f) for f in files]))
            decode_rate = n_clips / (time.perf_counter() - t0)
            entry = {"size": size, "videos": n, "seconds_each": args.e2e_seconds, "media_generation_s": round(made_s, 1),
                     "decode_limit_clips_per_s": round(decode_rate, 2), "runs": []}
            results["sizes"].append(entry)
            if i == 0:  # first use of the GPU, libraries and caches in this process: not measured
                warm = tmp / "warm-up"
                warm.mkdir()
                os.link(files[0], warm / files[0].name)
                extract_module.extract([warm], tmp / "warm-up.h5", weights=ckpt, device=args.device, progress=False)
            entry["runs"].append(run("defaults", folder, n_clips, decode_rate))
            report.store("end_to_end", results)
            if i > 0:
                continue
            # the hand-over before issue #16: each tensor in shared memory of its own, passed as a descriptor
            original = extract_module.decoded_items
            extract_module.decoded_items = lambda jobs, spec, plan, workers, timeout, dev: WorkerPool(
                jobs, spec, plan, workers, timeout, lend_tensors=False).start()
            try:
                entry["runs"].append(run("descriptor_handover", folder, n_clips, decode_rate))
            finally:
                extract_module.decoded_items = original
            extract_module.BatchEncoder = NoOpEncoder
            try:
                entry["runs"].append(run("noop_encoder", folder, n_clips, decode_rate))
            finally:
                extract_module.BatchEncoder = BatchEncoder
            report.store("end_to_end", results)
            # worker sweep on a subset (one worker would take minutes on all files), against its own decode limit
            subset = tmp / "subset"
            subset.mkdir()
            for f in files[:args.sweep_videos]:
                os.link(f, subset / f.name)
            t0 = time.perf_counter()
            with ProcessPoolExecutor(cores) as pool:
                list(pool.map(decode_all_streams, [str(f) for f in files[:args.sweep_videos]]))
            sub_clips = args.sweep_videos * int(args.e2e_seconds // clip_s)
            sub_rate = sub_clips / (time.perf_counter() - t0)
            entry["sweep"] = {"videos": args.sweep_videos, "decode_limit_clips_per_s": round(sub_rate, 2), "runs": []}
            for workers in (1, 4, 8, default_workers):
                entry["sweep"]["runs"].append(run(f"sweep{workers}", subset, sub_clips, sub_rate, workers=workers))
                report.store("end_to_end", results)
    report["end_to_end"] = results


if __name__ == "__main__":
    main()
