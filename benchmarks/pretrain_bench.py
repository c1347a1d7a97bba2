"""Pretraining throughput (training clips/s: forward + backward + Adam step) of the
objective on random inputs, for the released Social-MAE size by default.

  python benchmarks/pretrain_bench.py --arch social-mae --batch-size 8 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch

from pretraining.objective import PretrainObjective
from socialfeat.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)
    model = create_model(args.arch).to(dev).train()
    objective = PretrainObjective(model)
    opt = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.95, 0.999), weight_decay=5e-7)
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    b = args.batch_size
    audio, video = torch.randn(b, kw["audio_length"], 128, device=dev), torch.randn(b, *vshape, device=dev)
    noise = torch.randn if model.info.family == "social-mae" else torch.rand
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def step():
        with amp:
            loss = objective(audio, video, noise(b, model.num_audio_tokens, device=dev),
                             noise(b, model.num_video_tokens, device=dev))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    rate = args.steps * b / (time.perf_counter() - t)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.arch} pretraining, batch {b}, {name}, {'bf16 autocast' if dev.type == 'cuda' else 'fp32'}")
    print(f"training clips/s: {rate:.2f}")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
