"""Transformer building blocks shared by CAV-MAE and Social-MAE.

Owned here instead of patching timm (the reference code overwrites
``timm.models.vision_transformer.Block`` at construction time). Module and
parameter names match the released checkpoints (``attn.qkv``, ``mlp.fc1``,
``norm1_a`` ...), so official state dicts load with ``strict=True``.

References: CAV-MAE (Gong et al., ICLR 2023, github.com/YuanGongND/cav-mae),
Social-MAE (Bohy et al., FG 2024, github.com/HuBohy/SocialMAE), MAE
(He et al., github.com/facebookresearch/mae).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Modality = Literal["a", "v"] | None


def patch_linear(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` as tokens (B, L, D) for a conv whose stride equals its kernel (no padding):
    cut ``x`` into non-overlapping patches and multiply by the flattened kernel.

    The same numbers as the conv (same weights, same parameter names), but one matrix
    product: CUDA has no fast kernel for such a Conv3d (the released Social-MAE's
    tubelets took 4.7 ms per call in ``implicit_convolveNd_sgemm``, 6.7 % of eager
    ``encode`` on an H100). Tokens come out in the conv's output order (row-major over
    the spatial axes); trailing pixels that fill no whole patch are dropped, as by the conv.
    """
    kernel, n = conv.kernel_size, len(conv.kernel_size)
    b, c = x.shape[:2]
    grid = [size // k for size, k in zip(x.shape[2:], kernel)]
    x = x[(..., *(slice(0, g * k) for g, k in zip(grid, kernel)))]
    shape = [b, c]
    for g, k in zip(grid, kernel):
        shape += [g, k]
    # (B, C, g1, k1, g2, k2, ...) -> (B, g1, g2, ..., C, k1, k2, ...)
    order = [0] + [2 + 2 * i for i in range(n)] + [1] + [3 + 2 * i for i in range(n)]
    patches = x.reshape(shape).permute(order).reshape(b, -1, conv.weight[0].numel())
    return F.linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)


class PatchEmbed(nn.Module):
    """2-D patches: (B, C, H, W) -> (B, H/p * W/p, D), row-major over (h, w)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_linear(x, self.proj)


class PatchEmbed3D(nn.Module):
    """Tubelets for Social-MAE: (B, C, H, W, T) -> (B, H/p * W/p * T/s, D).

    Time is the LAST input axis and the fastest-varying token index, i.e. tokens
    are ordered (h, w, t) exactly as the released weights expect.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, n_frames: int = 8, t_stride: int = 2):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.stride = t_stride
        self.num_patches = (img_size // patch_size) ** 2 * (n_frames // t_stride)
        kernel = (patch_size, patch_size, t_stride)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_linear(x, self.proj)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``
    (flash / memory-efficient kernels where available)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # batch, tokens, dim
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block with three sets of LayerNorms.

    The attention and MLP weights are shared; ``modality`` picks the norms:
    None = unified (joint stream), 'a' = audio-specific, 'v' = visual-specific.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1, self.norm1_a, self.norm1_v = norm_layer(dim), norm_layer(dim), norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True)
        self.norm2, self.norm2_a, self.norm2_v = norm_layer(dim), norm_layer(dim), norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, modality: Modality = None) -> torch.Tensor:
        if modality is None:
            n1, n2 = self.norm1, self.norm2
        elif modality == "a":
            n1, n2 = self.norm1_a, self.norm2_a
        elif modality == "v":
            n1, n2 = self.norm1_v, self.norm2_v
        else:
            raise ValueError(f"modality must be None, 'a' or 'v', got {modality!r}")
        x = x + self.attn(n1(x))
        return x + self.mlp(n2(x))


def sincos_pos_embed_2d(embed_dim: int, grid_h: int, grid_w: int,
                        variant: Literal["cav-mae", "social-mae"] = "cav-mae") -> torch.Tensor:
    """Fixed 2-D sin-cos position table, (grid_h * grid_w, embed_dim), float32.

    Reproduces each reference's own table so that a model built from scratch
    starts where the published code starts:
    - 'cav-mae' (MAE's recipe): frequencies 1/10000**(i/(D/4)) in float64; the
      first half of the channels encodes the meshgrid's first array (the
      w coordinate), the second half the h coordinate.
    - 'social-mae': Social-MAE's pos_embed.py computes frequencies in float32
      as ``1/1000 * i/(D/4)`` and encodes the same coordinate in both halves.
    Released checkpoints store these tables, so loading weights overrides them.
    """
    assert embed_dim % 4 == 0, "embed_dim must be divisible by 4"
    gh = np.arange(grid_h, dtype=np.float32)
    gw = np.arange(grid_w, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, -1)  # (2, H*W), row-major over (h, w)
    half = embed_dim // 2
    if variant == "cav-mae":
        omega = np.arange(half // 2, dtype=np.float64) / (half / 2.0)
        omega = 1.0 / 10000 ** omega
        coords = (grid[0], grid[1])
    elif variant == "social-mae":
        omega = np.arange(half // 2, dtype=np.float32)
        omega /= half / 2.0
        omega = 1.0 / 1000 * omega
        coords = (grid[0], grid[0])
    else:
        raise ValueError(f"unknown pos-embed variant {variant!r}")
    parts = []
    for pos in coords:
        out = np.einsum("m,d->md", pos, omega)  # (M, D/4)
        parts += [np.sin(out), np.cos(out)]
    table = np.concatenate(parts, axis=1)
    return torch.from_numpy(table).float()
