"""Throughput of ``encode`` (all three embeddings in one pass) on random inputs.

Prints clips/s per batch size and precision (fp32; bf16 autocast) for one
architecture at its released size. On a GPU it also prints peak memory.
Run on demand:  python benchmarks/encoder_bench.py --arch social-mae --batch-sizes 1,16,64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from socialfeat.models import create_model


def bench(fn, min_seconds: float, min_iters: int = 2) -> float:
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    dev = torch.device(args.device)
    model = create_model(args.arch).to(dev).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    rows = []
    print(f"# {args.arch} on {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads), torch {torch.__version__}")
    for dtype in args.dtypes.split(","):
        for bs in map(int, args.batch_sizes.split(",")):
            audio = torch.randn(bs, kw["audio_length"], 128, device=dev)
            video = torch.randn(bs, *vshape, device=dev)
            amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

            def run():
                with torch.inference_mode(), amp:
                    model.encode(audio, video)
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            sec = bench(run, args.min_seconds)
            rows.append({"arch": args.arch, "device": str(dev), "dtype": dtype, "batch": bs, "clips_per_s": bs / sec})
            print(f"{dtype:5s} batch {bs:3d}: {bs / sec:9.2f} clips/s")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
