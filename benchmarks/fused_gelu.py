"""GELU fused into the fc1 product of every block's MLP: the last lever of issue #16 (2000 clips/s on a
GPU) not yet measured, measured by ``gpu_all.py`` before it could become part of extract's bf16.

The H200 profile of the compiled model call (docs/performance.md) puts 55 % of the kernel time in
matrix products and leaves the MLP's GELU as a separate elementwise pass over the largest activation
(tokens x 4 x dim). cuBLASLt can apply GELU in the epilogue of the fc1 product
(``torch._addmm_activation(..., use_gelu=True)``), which saves that pass, but its GELU is the tanh
approximation, not the exact (erf) GELU of the reference: the parity tests reject it for fp32, so
it can only be a bf16 option, where the cosine to fp32 must stay >= 0.999 (issue #16).

On a CPU (a check of the numbers, not of the speed) the same tanh GELU is applied after the bf16
product: ``python benchmarks/fused_gelu.py`` prints the embeddings' cosine to fp32 with and without it.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from socialfeat.models.layers import Mlp


def _fused_forward(self: Mlp, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if x.is_cuda:  # cuBLASLt's GELU epilogue (tanh-approximate)
        hidden = torch._addmm_activation(self.fc1.bias, rows, self.fc1.weight.t(), use_gelu=True)
    else:  # the same function, applied after the product
        hidden = nn.functional.gelu(nn.functional.linear(rows, self.fc1.weight, self.fc1.bias), approximate="tanh")
    return self.fc2(hidden).reshape(*x.shape[:-1], -1)


def fuse_gelu(model: nn.Module) -> int:
    """Give every Mlp of ``model`` the fused fc1+GELU forward (in place); returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, Mlp):
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n


def main() -> None:
    from _inputs import model_and_inputs

    from socialfeat.model_call import ModelCall

    model, audio, video = model_and_inputs(__doc__)
    cpu = torch.device("cpu")
    batch = len(audio)
    reference = ModelCall(model, cpu, "fp32", batch)(audio, video)
    for name, fused in (("bf16 weights", False), ("bf16 weights + tanh GELU (fused on a GPU)", True)):
        call = ModelCall(model, cpu, "bf16", batch, bf16_weights=True)
        if fused:
            fuse_gelu(call.model)
        out = call(audio, video)
        cos = {k: round(float(nn.functional.cosine_similarity(getattr(reference, k), getattr(out, k), dim=-1).min()),
                        6) for k in ("joint", "audio", "visual")}
        print(f"{name}: minimum cosine to fp32 {cos}")


if __name__ == "__main__":
    main()
