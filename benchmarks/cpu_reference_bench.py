"""CPU fp32: ``encode`` against the reference implementations' forward, same machine and threads.

The reference code (CAV-MAE / Social-MAE) has no call that returns the joint, audio and
visual embeddings together: it takes ``forward_feat`` (audio and visual tokens, through the
unified block with modality norms) plus the finetuning ``forward`` in 'multimodal' mode
(joint stream), so its modality-specific trunk runs twice. ``encode`` runs it once.

The baseline replays the reference's call sequence on the same weights with the reference's
attention arithmetic: timm's ``Attention`` (``fused_attn`` on, as in the versions that made
the parity fixtures: ``F.scaled_dot_product_attention``), or the explicit
``softmax(q @ k^T * scale) @ v`` of timm 0.4.x that the published repositories pin
(``--attention explicit``). The first lines check that the baseline returns the same
numbers. Runs are interleaved and the median is reported, because the machine is shared.

    python benchmarks/cpu_reference_bench.py --arch social-mae --batch 2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

import torch

from socialfeat.models import create_model, layers


def explicit_attention(self: layers.Attention, x: torch.Tensor) -> torch.Tensor:
    """timm 0.4.x ``Attention.forward``: materialised attention matrix."""
    B, N, C = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
    attn = attn.softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


@contextmanager
def attention(kind: str):
    original = layers.Attention.forward
    if kind == "explicit":
        layers.Attention.forward = explicit_attention
    try:
        yield
    finally:
        layers.Attention.forward = original


def reference_joint(model, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Finetuning ``forward(mode='multimodal')`` without the head: the joint embedding."""
    x = torch.cat((model.forward_audio_specific(a), model.forward_video_specific(v)), dim=1)
    return model.forward_unified(x).mean(dim=1)


def reference_three(model, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The reference's way to all three embeddings: ``forward_feat`` + the multimodal forward."""
    audio, visual = model.forward_feat(a, v)
    return reference_joint(model, a, v), audio.mean(dim=1), visual.mean(dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--attention", default="fused,explicit", help="reference attention variants to compare")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.arch).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    a = torch.randn(args.batch, kw["audio_length"], 128)
    v = torch.randn(args.batch, *vshape)
    variants = args.attention.split(",")

    with torch.inference_mode():
        enc = model.encode(a, v)
        for kind in variants:
            with attention(kind):
                joint, audio, visual = reference_three(model, a, v)
            diff = max((joint - enc.joint).abs().max().item(), (audio - enc.audio).abs().max().item(),
                       (visual - enc.visual).abs().max().item())
            print(f"# reference ({kind} attention) vs encode: max abs difference {diff:.2e}")
            assert diff < 1e-4, "the baseline does not compute the same embeddings"

        runs = {"encode": lambda: model.encode(a, v)}
        for kind in variants:
            runs[f"reference_three_{kind}"] = (lambda k: lambda: _with(k, reference_three, model, a, v))(kind)
            runs[f"reference_joint_{kind}"] = (lambda k: lambda: _with(k, reference_joint, model, a, v))(kind)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"# {args.arch}, CPU fp32, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {args.repeats}")
    out = {"arch": args.arch, "batch": args.batch, "threads": torch.get_num_threads(), "clips_per_s": {},
           "encode_speedup": {}}
    for name, sec in med.items():
        out["clips_per_s"][name] = args.batch / sec
        ratio = sec / med["encode"]
        if name != "encode":
            out["encode_speedup"][name] = ratio
        print(f"{name:28s} {args.batch / sec:7.3f} clips/s   encode speed-up {ratio:5.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def _with(kind, fn, *args):
    with attention(kind):
        return fn(*args)


if __name__ == "__main__":
    main()
