"""FP8 linear layers for the encoder trunk: an experiment of issue #16 (2000 clips/s on a GPU),
measured by ``gpu_all.py`` before it becomes a precision of ``extract``.

Hopper GPUs multiply float8 (e4m3) matrices at twice the bf16 rate, with fp32 accumulation
(``torch._scaled_mm``). Weights are quantized once, with a scale per output channel;
activations at each call, with a scale per row (token), both to the e4m3 range (448). The
product comes back in bf16 and the bias is added after it. Only the transformer blocks'
linear layers change (as for int8 on the CPU, socialfeat.models.fast.TRUNK), by default those
of the MLPs (``fc1``, ``fc2``: two thirds of the blocks' multiply-adds); attention, norms and
patch embeddings stay bf16. Simulated on the CPU (released size, random weights and inputs,
batch 4), the lowest of the three embeddings' minimum cosine to fp32 was 0.99972 with fp8 in
``fc1`` alone, 0.99969 ``fc2``, 0.99937 ``qkv``, 0.99895 ``proj``; 0.99945 both MLP layers, 0.99796
all four: all four miss issue #16's 0.999, hence the MLPs by default.

On a CPU (a check of the numbers, not of the speed) the same quantization is applied and the
product is taken in fp32 from the dequantized values, which is what the GPU computes up to the
order of the additions: ``python benchmarks/fp8.py`` prints the embeddings' cosine to fp32.
"""

from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0
MLP = ("fc1", "fc2")
ALL = ("qkv", "proj", "fc1", "fc2")


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows, k) as e4m3 values and the fp32 scale of each row: x ~ values * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """``linear`` with float8 weights (a scale per output channel) and activations quantized per row."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight_t", weight.t())  # (in, out), column-major: _scaled_mm's second operand
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16),
                                                                  requires_grad=False)
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        values, scale = _rowwise(rows)
        if x.is_cuda:
            y = torch._scaled_mm(values, self.weight_t, scale_a=scale, scale_b=self.weight_scale,
                                 out_dtype=torch.bfloat16)
        else:  # the same numbers, computed in fp32
            y = ((values.float() * scale) @ (self.weight_t.float() * self.weight_scale)).to(torch.bfloat16)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def to_fp8(model: nn.Module, layers: tuple[str, ...] = MLP) -> nn.Module:
    """Replace the blocks' linear layers named in ``layers`` in place; returns ``model``."""
    from socialfeat.models.fast import trunk_linears

    for parent, name, linear in trunk_linears(model):
        if name in layers:
            setattr(parent, name, Fp8Linear(linear))
    return model


def main() -> None:
    import copy

    import torch.nn.functional as F
    from _inputs import model_and_inputs

    model, audio, video = model_and_inputs(__doc__)
    variants = [("bf16 weights", copy.deepcopy(model).to(torch.bfloat16))]
    variants += [(f"fp8 {', '.join(layers)}", to_fp8(copy.deepcopy(model).to(torch.bfloat16), layers))
                 for layers in (MLP, ALL)]
    with torch.inference_mode():
        ref = model.encode(audio, video)
        for name, m in variants:
            out = m.encode(audio.to(torch.bfloat16), video.to(torch.bfloat16))
            cos = {k: round(float(F.cosine_similarity(getattr(ref, k), getattr(out, k).float(), dim=-1).min()), 6)
                   for k in ("joint", "audio", "visual")}
            print(name, "min cosine to fp32:", cos)


if __name__ == "__main__":
    main()
