"""End-to-end extraction against its two limits, measured in one run on the same files:

- decode limit: ffmpeg decoding the same files to null, one process per worker, 1 thread each;
- model limit: ``encode`` on random inputs at the same batch size;
- end to end: ``socialfeat.extract`` with the same workers and batch size.
Prints clips/s for each and the ratios. Usage:
  python benchmarks/extract_bench.py --arch social-mae-tiny --videos 4 --seconds 30 --workers 2
(use --arch social-mae for the released model size; on a CPU the model then dominates).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from _media import make_videos

from socialfeat.encoder import resolve_precision
from socialfeat.extract import extract
from socialfeat.models import create_model, save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="social-mae-tiny")
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--size", default="640x480")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_videos(tmp / "videos", args.videos, args.seconds, args.size)
        model = create_model(args.arch)
        ckpt = save_checkpoint(model, tmp / "model.pt")
        clip_s = model.info.preprocess.clip_seconds
        n_clips = args.videos * int(args.seconds // clip_s)

        t = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda f: subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(f),
                                                    "-f", "null", "-"], check=True), files))
        decode = n_clips / (time.perf_counter() - t)

        dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                           ("cpu" if args.device == "auto" else args.device))
        net = model.to(dev).eval()
        kw = model.info.model_kwargs
        vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
        a = torch.randn(args.batch_size, kw["audio_length"], 128, device=dev)
        v = torch.randn(args.batch_size, *vshape, device=dev)
        precision = resolve_precision(args.precision, dev)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        n_batches = max(1, n_clips // args.batch_size)
        with torch.inference_mode(), amp:
            net.encode(a, v)
            t = time.perf_counter()
            for _ in range(n_batches):
                net.encode(a, v)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        model_only = n_batches * args.batch_size / (time.perf_counter() - t)

        t = time.perf_counter()
        summary = extract([tmp / "videos"], tmp / "out.h5", weights=ckpt, batch_size=args.batch_size,
                          workers=args.workers, device=args.device, precision=precision, progress=False)
        e2e = summary.n_clips / (time.perf_counter() - t)
    print(f"# {args.videos} x {args.seconds:.0f} s {args.size} H.264, {args.arch}, {args.workers} workers, "
          f"batch {args.batch_size}, device {dev}, {precision}")
    print(f"decode-only (ffmpeg -> null): {decode:9.1f} clips/s")
    print(f"model-only (encode):          {model_only:9.1f} clips/s")
    print(f"end-to-end (extract):         {e2e:9.1f} clips/s")
    print(f"end-to-end / decode-only:     {e2e / decode:9.2f}")
    print(f"end-to-end / model-only:      {e2e / model_only:9.2f}")


if __name__ == "__main__":
    main()
