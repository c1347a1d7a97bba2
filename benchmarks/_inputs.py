"""The model and random inputs that the CPU checks of the GPU experiments (fp8.py, fused_gelu.py) share."""

from __future__ import annotations

import argparse

import torch


def model_and_inputs(description: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``--arch`` (released size by default) with seeded random weights, and ``--batch`` random clips."""
    from socialfeat.models import create_model

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="social-mae")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model(args.arch).eval()
    kw = model.info.model_kwargs
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(args.batch, kw["audio_length"], 128, generator=g), \
        torch.randn(args.batch, *vshape, generator=g)
