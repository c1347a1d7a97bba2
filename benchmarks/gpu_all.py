"""Every GPU measurement in one short run (for a lent GPU machine with no network).

Writes ``$OUT/gpu_figures.json`` (or ./gpu_figures.json) with: device name, encode clips/s
(fp32 and bf16 autocast, with and without torch.compile) at batch 1/16/64, bf16-vs-fp32
embedding cosine, peak memory, and the training step rate. Usage on the device machine:
  .venv/bin/python benchmarks/gpu_all.py --seconds 3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from pretraining.objective import PretrainObjective
from socialfeat.models import create_model


def timed(fn, seconds: float) -> float:
    fn()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--arch", default="social-mae")
    args = p.parse_args()
    assert torch.cuda.is_available(), "this script measures a CUDA device"
    dev = torch.device("cuda")
    out: dict = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "encode": []}
    model = create_model(args.arch).to(dev).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    g = torch.Generator(device="cpu").manual_seed(0)
    a64 = torch.randn(64, kw["audio_length"], 128, generator=g).to(dev)
    v64 = torch.randn(64, *vshape, generator=g).to(dev)
    with torch.inference_mode():
        full = model.encode(a64[:8], v64[:8])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model.encode(a64[:8], v64[:8])
    out["bf16_cosine_min"] = {k: float(torch.nn.functional.cosine_similarity(
        getattr(full, k), getattr(half, k).float(), dim=-1).min()) for k in ("joint", "audio", "visual")}
    compiled = torch.compile(model.encode, dynamic=False)
    for name, fn in (("eager", model.encode), ("compile", compiled)):
        for dtype in ("fp32", "bf16"):
            for bs in (1, 16, 64):
                amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16")

                def run():
                    with torch.inference_mode(), amp:
                        fn(a64[:bs], v64[:bs])

                torch.cuda.reset_peak_memory_stats(dev)
                sec = timed(run, args.seconds)
                row = {"mode": name, "dtype": dtype, "batch": bs, "clips_per_s": bs / sec,
                       "peak_gib": torch.cuda.max_memory_allocated(dev) / 2 ** 30}
                out["encode"].append(row)
                print(row, flush=True)
    train = create_model(args.arch).to(dev).train()
    objective = PretrainObjective(train)
    opt = torch.optim.Adam(train.parameters(), lr=5e-5)
    bs = 16

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = objective(a64[:bs], v64[:bs], torch.randn(bs, train.num_audio_tokens, device=dev),
                             torch.randn(bs, train.num_video_tokens, device=dev))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out["pretrain_clips_per_s_bf16_batch16"] = bs / timed(step, args.seconds)
    target = Path(os.environ.get("OUT", ".")) / "gpu_figures.json"
    target.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
