"""Patch embeddings as a matrix product (layers.patch_linear) against the conv they replace.

Interleaved A/B in one process, released size by default: the patch embeddings alone
(audio 2-D and video 2-D/3-D) and the whole ``encode`` in fp32 and int8. Prints wall and
CPU seconds (CPU seconds are steadier on a shared machine), medians over the rounds.

  python benchmarks/patch_embed_bench.py --arch social-mae --batch 2 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from contextlib import contextmanager

import torch

from socialfeat.models import create_model
from socialfeat.models.fast import quantize_linears
from socialfeat.models.layers import PatchEmbed, PatchEmbed3D


def conv_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The previous forward: the conv itself."""
    return self.proj(x).flatten(2).transpose(1, 2)


@contextmanager
def patch_as_conv(enabled: bool):
    saved = PatchEmbed.forward, PatchEmbed3D.forward
    if enabled:
        PatchEmbed.forward = PatchEmbed3D.forward = conv_forward
    try:
        yield
    finally:
        PatchEmbed.forward, PatchEmbed3D.forward = saved


def clock(fn, reps: int) -> tuple[float, float]:
    fn()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - w) / reps, (time.process_time() - c) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--embed-reps", type=int, default=20)
    p.add_argument("--cases", default="embeds,fp32,int8", help="comma-separated subset of embeds, fp32, int8")
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    audio, video = torch.randn(args.batch, kw["audio_length"], 128), torch.randn(args.batch, *vshape)
    int8 = quantize_linears(copy.deepcopy(model))
    cases = {
        "patch embeds": (lambda: (model.embed_audio(audio), model.embed_video(video)), args.embed_reps),
        "encode fp32": (lambda: model.encode(audio, video), 1),
        "encode int8": (lambda: int8.encode(audio, video), 1),
    }
    chosen = {"embeds": "patch embeds", "fp32": "encode fp32", "int8": "encode int8"}
    cases = {chosen[c]: cases[chosen[c]] for c in args.cases.split(",")}
    times = {(c, v): [] for c in cases for v in ("conv", "linear")}
    with torch.inference_mode():
        for r in range(args.rounds):
            for case, (fn, reps) in cases.items():
                for variant in (("conv", "linear") if r % 2 == 0 else ("linear", "conv")):
                    with patch_as_conv(variant == "conv"):
                        times[case, variant].append(clock(fn, reps))
    print(f"{args.arch}, batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds (median)")
    for case in cases:
        row = []
        for variant in ("conv", "linear"):
            wall = statistics.median(t[0] for t in times[case, variant])
            cpu = statistics.median(t[1] for t in times[case, variant])
            row.append(f"{variant}: {wall * 1e3:8.1f} ms wall {cpu * 1e3:8.1f} ms cpu")
        print(f"{case:13s} | " + " | ".join(row))


if __name__ == "__main__":
    main()
