"""Social-MAE (Bohy et al., "Social-MAE: A Transformer-Based Multimodal Autoencoder
for Face and Voice", FG 2024).

CAV-MAE with a tubelet visual embedding over ``n_frame`` frames: video input is
(B, 3, 224, 224, n_frame) with time LAST; ``stride`` frames form one tubelet, so
the released configuration (8 frames, stride 2) gives 14*14*4 = 784 video tokens.
Reference: github.com/HuBohy/SocialMAE, src/models/social_mae.py.

Reference behaviours copied on purpose (documented in docs/fidelity.md):
masking noise is normal (``torch.randn``), not uniform; the video position table
is laid on a square grid of side sqrt(num tokens) built with Social-MAE's own
pos_embed.py; the MAE video target is patchified in (t, h, w) token order while
the encoder's tokens are (h, w, t).
"""

from __future__ import annotations

import math

import torch

from socialfeat.models.avmae import AVMAE, AVMAEFT
from socialfeat.models.layers import PatchEmbed3D


class _SocialMixin:
    pos_embed_variant = "social-mae"

    def _make_video_patch_embed(self, img_size, patch_size, in_chans, embed_dim):
        return PatchEmbed3D(img_size, patch_size, in_chans, embed_dim,
                            n_frames=self._n_frame, t_stride=self._stride)

    def _video_pos_grid(self) -> tuple[int, int]:
        """The reference's square grid of side sqrt(tokens) (28 x 28 for 784 tokens). Where
        the token count is not a square (the reference crashes there), a (space, time) grid."""
        side = math.isqrt(self.num_video_tokens)
        if side * side == self.num_video_tokens:
            return side, side
        frames = self._n_frame // self._stride
        return self.num_video_tokens // frames, frames


class SocialMAE(_SocialMixin, AVMAE):
    """Social-MAE pretraining model. Defaults are the released configuration
    (ViT-B, audio_length 1024, 8 frames, temporal stride 2, learnable positions)."""

    def __init__(self, img_size: int = 224, audio_length: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, modality_specific_depth: int = 11,
                 num_heads: int = 12, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_layer=torch.nn.LayerNorm,
                 norm_pix_loss: bool = False, tr_pos: bool = True, n_frame: int = 8, stride: int = 2,
                 target_order: str = "reference"):
        """``target_order``: 'reference' patchifies the MAE video target in (t, h, w)
        order as the published code does (its token order does not match the
        encoder's); 'tokens' uses the encoder's (h, w, t) order, so each decoder
        output is compared with its own tubelet (socialfeat pretraining default)."""
        if target_order not in ("reference", "tokens"):
            raise ValueError(f"target_order must be 'reference' or 'tokens', got {target_order!r}")
        self._n_frame, self._stride = n_frame, stride
        self.target_order = target_order
        super().__init__(img_size, audio_length, patch_size, in_chans, embed_dim,
                         modality_specific_depth, num_heads, decoder_embed_dim, decoder_depth,
                         decoder_num_heads, mlp_ratio, norm_layer, norm_pix_loss, tr_pos)

    @property
    def video_patch_dim(self) -> int:
        return self.patch_size ** 2 * self._stride * self.in_chans

    def masking_noise(self, n: int, length: int, device) -> torch.Tensor:
        return torch.randn(n, length, device=device)

    def patchify_video(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W, T) -> (N, L, s*p*p*C).

        'reference': tokens in (t, h, w) order, values (s, p, q, c) (the published target);
        'tokens': tokens in the encoder's (h, w, t) order, values (p, q, s, c).
        """
        p, s, c = self.patch_size, self._stride, self.in_chans
        n, _, hh, ww, tt = imgs.shape
        h, w, t = hh // p, ww // p, tt // s
        x = imgs.reshape(n, c, h, p, w, p, t, s)
        pattern = "nchpwqts->nthwspqc" if self.target_order == "reference" else "nchpwqts->nhwtpqsc"
        x = torch.einsum(pattern, x)
        return x.reshape(n, h * w * t, p * p * s * c)


class SocialMAEFT(_SocialMixin, AVMAEFT):
    """Social-MAE finetuning model; modes multimodal, audioonly, videoonly."""

    modes = ("multimodal", "audioonly", "videoonly")

    def __init__(self, label_dim: int, img_size: int = 224, audio_length: int = 1024,
                 patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 modality_specific_depth: int = 11, num_heads: int = 12, mlp_ratio: float = 4.0,
                 norm_layer=torch.nn.LayerNorm, norm_pix_loss: bool = False, tr_pos: bool = True,
                 n_frame: int = 8, stride: int = 2):
        self._n_frame, self._stride = n_frame, stride
        super().__init__(label_dim, img_size, audio_length, patch_size, in_chans, embed_dim,
                         modality_specific_depth, num_heads, mlp_ratio, norm_layer, norm_pix_loss, tr_pos)
