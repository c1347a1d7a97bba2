"""The audio-visual masked autoencoder shared by CAV-MAE and Social-MAE.

Social-MAE is CAV-MAE with a 3-D (tubelet) visual patch embedding over several
frames; everything else (modality-specific blocks, one or more unified blocks
with per-modality LayerNorms, MAE decoder, contrastive loss) is the same. The
classes here hold that common algorithm; ``cav_mae.py`` and ``social_mae.py``
fill in the few family-specific steps.

Shapes: audio fbank ``a: (B, T, 128)`` (T = audio_length frames of 10 ms),
CAV-MAE video ``v: (B, 3, H, W)``, Social-MAE video ``v: (B, 3, H, W, F)``
(time last). Audio tokens are frequency-major: (128/16) x (T/16).

References: CAV-MAE (Gong et al., ICLR 2023), Social-MAE (Bohy et al., FG 2024),
MAE (He et al., CVPR 2022); code at github.com/YuanGongND/cav-mae,
github.com/HuBohy/SocialMAE, github.com/facebookresearch/mae.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Collection

import torch
import torch.nn.functional as F
from torch import nn

from socialfeat.models.layers import Block, PatchEmbed, sincos_pos_embed_2d

NUM_MEL_BINS = 128
# The reference hard-codes a 12-layer trunk: unified depth = 12 - modality_specific_depth.
TOTAL_DEPTH = 12
EMBEDDINGS = ("joint", "audio", "visual")  # what encode() can return


@dataclass
class Encoding:
    """Mean-pooled embeddings of one forward pass, each (B, D); absent modalities are None.

    - audio: audio tokens through the unified blocks with audio norms + norm_a
    - visual: visual tokens through the unified blocks with visual norms + norm_v
    - joint: concatenated tokens through the unified blocks + shared norm
      (the representation the finetuned heads were trained on)
    - logits: the task head on ``joint`` (finetuned models only)
    - tokens: optional token sequences {'audio', 'visual', 'joint'}, (B, L, D)
    """

    audio: torch.Tensor | None = None
    visual: torch.Tensor | None = None
    joint: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)


class AVEncoder(nn.Module):
    """Encoder trunk: patch embeddings, modality-specific and unified blocks, norms."""

    pos_embed_variant = "cav-mae"

    def __init__(self, img_size: int = 224, audio_length: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, modality_specific_depth: int = 11,
                 num_heads: int = 12, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False, tr_pos: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.audio_grid = (NUM_MEL_BINS // patch_size, audio_length // patch_size)  # (freq, time)

        self.patch_embed_a = PatchEmbed(img_size, patch_size, 1, embed_dim)
        self.patch_embed_a.num_patches = self.audio_grid[0] * self.audio_grid[1]
        self.patch_embed_v = self._make_video_patch_embed(img_size, patch_size, in_chans, embed_dim)

        self.modality_a = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, self.num_audio_tokens, embed_dim), requires_grad=tr_pos)
        self.pos_embed_v = nn.Parameter(torch.zeros(1, self.num_video_tokens, embed_dim), requires_grad=tr_pos)

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, norm_layer) for _ in range(n)])

        self.blocks_a = blocks(modality_specific_depth)
        self.blocks_v = blocks(modality_specific_depth)
        self.blocks_u = blocks(TOTAL_DEPTH - modality_specific_depth)
        self.norm_a, self.norm_v, self.norm = norm_layer(embed_dim), norm_layer(embed_dim), norm_layer(embed_dim)

    # -- family-specific hooks ------------------------------------------------
    def _make_video_patch_embed(self, img_size, patch_size, in_chans, embed_dim) -> nn.Module:
        return PatchEmbed(img_size, patch_size, in_chans, embed_dim)

    @property
    def num_audio_tokens(self) -> int:
        return self.patch_embed_a.num_patches

    @property
    def num_video_tokens(self) -> int:
        return self.patch_embed_v.num_patches

    def _video_pos_grid(self) -> tuple[int, int]:
        side = int(self.num_video_tokens ** 0.5)  # the reference lays any token count on a square grid
        return side, side

    # -- initialisation (as the reference: sin-cos tables, xavier, N(0, .02)) --
    def initialize_weights(self) -> None:
        for name, grid in (("pos_embed_a", self.audio_grid), ("pos_embed_v", self._video_pos_grid()),
                           ("decoder_pos_embed_a", self.audio_grid),
                           ("decoder_pos_embed_v", self._video_pos_grid())):
            param = getattr(self, name, None)
            if param is not None:
                table = sincos_pos_embed_2d(param.shape[-1], *grid, variant=self.pos_embed_variant)
                param.data.copy_(table.unsqueeze(0))
        for pe in (self.patch_embed_a, self.patch_embed_v):
            w = pe.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, not nn.Conv
        for name in ("modality_a", "modality_v", "decoder_modality_a", "decoder_modality_v", "mask_token"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    # -- encoder steps --------------------------------------------------------
    def embed_audio(self, a: torch.Tensor) -> torch.Tensor:
        """a: (B, T, 128) fbank -> (B, La, D) tokens with position and modality embeddings."""
        a = self.patch_embed_a(a.unsqueeze(1).transpose(2, 3))  # (B, 1, 128, T) -> (B, La, D)
        return a + self.pos_embed_a + self.modality_a

    def embed_video(self, v: torch.Tensor) -> torch.Tensor:
        """v: (B, 3, H, W[, F]) -> (B, Lv, D)."""
        return self.patch_embed_v(v) + self.pos_embed_v + self.modality_v

    def forward_audio_specific(self, a: torch.Tensor) -> torch.Tensor:
        x = self.embed_audio(a)
        for blk in self.blocks_a:
            x = blk(x)
        return x

    def forward_video_specific(self, v: torch.Tensor) -> torch.Tensor:
        x = self.embed_video(v)
        for blk in self.blocks_v:
            x = blk(x)
        return x

    def forward_unified(self, x: torch.Tensor, modality=None) -> torch.Tensor:
        """Unified blocks (chained) + the matching final norm."""
        for blk in self.blocks_u:
            x = blk(x, modality)
        norm = {None: self.norm, "a": self.norm_a, "v": self.norm_v}[modality]
        return norm(x)

    def forward_feat(self, a: torch.Tensor, v: torch.Tensor, mode: str = "av"):
        """Token features as the reference's retrieval path: ``'av'`` -> (audio, video)
        tokens through the unified blocks with modality-specific norms;
        ``'a'`` / ``'v'`` -> one of them."""
        if mode not in ("av", "a", "v"):
            raise ValueError(f"forward_feat mode must be 'av', 'a' or 'v', got {mode!r}")
        audio = self.forward_unified(self.forward_audio_specific(a), "a") if "a" in mode else None
        video = self.forward_unified(self.forward_video_specific(v), "v") if "v" in mode else None
        return (audio, video) if mode == "av" else (audio if mode == "a" else video)

    def encode(self, audio: torch.Tensor | None, video: torch.Tensor | None,
               return_tokens: bool = False, kinds: Collection[str] = EMBEDDINGS) -> Encoding:
        """All embeddings in one pass: the modality-specific blocks run once and
        their output feeds the audio, visual and joint unified paths.

        Either input may be None (missing modality); the joint embedding and
        logits then stay None as well. ``kinds`` limits the unified passes to the
        embeddings asked for (``("joint",)`` skips the audio- and visual-only passes,
        about 7 % of the work at the released size); the others stay None.
        """
        unknown = set(kinds) - set(EMBEDDINGS)
        if unknown:
            raise ValueError(f"kinds must be among {EMBEDDINGS}, got {sorted(unknown)}")
        out = Encoding()
        a = self.forward_audio_specific(audio) if audio is not None else None
        v = self.forward_video_specific(video) if video is not None else None
        tokens = {}
        if a is not None and "audio" in kinds:
            tokens["audio"] = self.forward_unified(a, "a")
        if v is not None and "visual" in kinds:
            tokens["visual"] = self.forward_unified(v, "v")
        if a is not None and v is not None and "joint" in kinds:
            tokens["joint"] = self.forward_unified(torch.cat((a, v), dim=1))
        for name, t in tokens.items():
            setattr(out, name, t.mean(dim=1))
        head = getattr(self, "mlp_head", None)
        if head is not None and out.joint is not None:
            out.logits = head(out.joint)
        if return_tokens:
            out.tokens = tokens
        return out


class AVMAE(AVEncoder):
    """Pretraining model: encoder + MAE decoder + contrastive objective.

    ``forward`` returns (loss, loss_mae, loss_mae_a, loss_mae_v, loss_c, mask_a,
    mask_v, c_acc) like the reference. Masks use 0 = keep, 1 = removed.
    """

    def __init__(self, img_size: int = 224, audio_length: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, modality_specific_depth: int = 11,
                 num_heads: int = 12, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_layer=nn.LayerNorm,
                 norm_pix_loss: bool = False, tr_pos: bool = False):
        super().__init__(img_size, audio_length, patch_size, in_chans, embed_dim,
                         modality_specific_depth, num_heads, mlp_ratio, norm_layer, norm_pix_loss, tr_pos)
        # ---- MAE decoder ----
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_a = nn.Parameter(
            torch.zeros(1, self.num_audio_tokens, decoder_embed_dim), requires_grad=tr_pos)
        self.decoder_pos_embed_v = nn.Parameter(
            torch.zeros(1, self.num_video_tokens, decoder_embed_dim), requires_grad=tr_pos)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_layer) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred_a = nn.Linear(decoder_embed_dim, patch_size ** 2)
        self.decoder_pred_v = nn.Linear(decoder_embed_dim, self.video_patch_dim)
        self.initialize_weights()

    # -- family-specific hooks ------------------------------------------------
    @property
    def video_patch_dim(self) -> int:
        return self.patch_size ** 2 * self.in_chans

    def masking_noise(self, n: int, length: int, device) -> torch.Tensor:
        """CAV-MAE draws uniform noise (Social-MAE overrides with normal noise)."""
        return torch.rand(n, length, device=device)

    def patchify_video(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs (N, C, H, W) -> (N, L, p*p*C), tokens row-major over (h, w)."""
        return self._patchify_2d(imgs, self.in_chans)

    def _patchify_2d(self, imgs: torch.Tensor, c: int) -> torch.Tensor:
        p = self.patch_size
        n, _, hh, ww = imgs.shape
        h, w = hh // p, ww // p
        x = imgs.reshape(n, c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, h * w, p * p * c)

    def patchify_audio(self, a: torch.Tensor) -> torch.Tensor:
        """a (N, T, 128) -> (N, La, p*p), in the encoder's frequency-major token order."""
        return self._patchify_2d(a.unsqueeze(1).transpose(2, 3), 1)

    # -- MAE steps ------------------------------------------------------------
    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Per-sample random masking by argsort of noise. x: (N, L, D).

        ``noise`` (N, L) may be given (pretraining draws it per sample, so that
        masks do not depend on batch composition); by default it is drawn from
        the global RNG as the reference does.
        Returns kept tokens (N, L_keep, D), mask (N, L) with 0 = keep, 1 = removed,
        and ids_restore (N, L).
        """
        N, L, D = x.shape  # batch, length, dim
        len_keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = self.masking_noise(N, L, x.device)
        return self._mask_from_noise(x, noise, len_keep)

    @staticmethod
    def _mask_from_noise(x: torch.Tensor, noise: torch.Tensor, len_keep: int):
        N, L, D = x.shape
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is keep, large is remove
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)  # 0 is keep, 1 is remove
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_masked, mask, ids_restore

    def random_masking_structured(self, x: torch.Tensor, mask_ratio: float, mode: str = "time"):
        """CAV-MAE's ablation masks for audio: whole time columns ('time'), whole
        frequency rows ('freq') or both ('tf')."""
        if mode not in ("time", "freq", "tf"):
            raise ValueError(f"unknown mask_mode {mode!r}")
        N, L, D = x.shape
        f, t = self.audio_grid
        len_keep = int(L * (1 - mask_ratio))
        noise = self.masking_noise(N, L, x.device).reshape(N, f, t)
        scale = 0.7 if mode == "tf" else 1.0
        # Same order of python-random draws as the reference: all time masks, then all frequency masks.
        if mode in ("time", "tf"):
            for i in range(N):
                for k in random.sample(range(t), int(t * mask_ratio * scale)):
                    noise[i, :, k] = 1.1  # large will be removed
        if mode in ("freq", "tf"):
            for i in range(N):
                for k in random.sample(range(f), int(f * mask_ratio * scale)):
                    noise[i, k, :] = 1.1
        return self._mask_from_noise(x, noise.reshape(N, L), len_keep)

    def forward_encoder(self, a: torch.Tensor, v: torch.Tensor, mask_ratio_a: float,
                        mask_ratio_v: float, mask_mode: str = "unstructured",
                        noise_a: torch.Tensor | None = None, noise_v: torch.Tensor | None = None):
        """Returns (latent, mask_a, ids_restore_a, mask_v, ids_restore_v, latent_c_a, latent_c_v).

        latent: (B, La_keep + Lv_keep, D) joint stream after the shared norm;
        latent_c_*: per-modality streams for the contrastive loss.
        """
        a, v = self.embed_audio(a), self.embed_video(v)
        if mask_mode == "unstructured":
            a, mask_a, ids_restore_a = self.random_masking(a, mask_ratio_a, noise_a)
        else:
            a, mask_a, ids_restore_a = self.random_masking_structured(a, mask_ratio_a, mask_mode)
        v, mask_v, ids_restore_v = self.random_masking(v, mask_ratio_v, noise_v)
        for blk in self.blocks_a:
            a = blk(a)
        for blk in self.blocks_v:
            v = blk(v)
        x = self.forward_unified(torch.cat((a, v), dim=1))
        # Reference quirk kept for fidelity: each unified block is applied to the
        # modality-specific output (not chained), so only the last one counts.
        ca = cv = None
        for blk in self.blocks_u:
            ca, cv = blk(a, "a"), blk(v, "v")
        return x, mask_a, ids_restore_a, mask_v, ids_restore_v, self.norm_a(ca), self.norm_v(cv)

    def forward_decoder(self, x, mask_a, ids_restore_a, mask_v, ids_restore_v):
        """Returns predictions (B, La, p*p) for audio and (B, Lv, video_patch_dim) for video."""
        x = self.decoder_embed(x)
        B, _, Dd = x.shape
        La = self.num_audio_tokens
        # The reference takes the number of masked tokens from sample 0 (all samples share it).
        n_mask_a, n_mask_v = int(mask_a[0].sum()), int(mask_v[0].sum())
        n_keep_a = La - n_mask_a
        a_ = torch.cat([x[:, :n_keep_a], self.mask_token.expand(B, n_mask_a, -1)], dim=1)
        a_ = torch.gather(a_, 1, ids_restore_a.unsqueeze(-1).expand(-1, -1, Dd))  # unshuffle
        v_ = torch.cat([x[:, n_keep_a:], self.mask_token.expand(B, n_mask_v, -1)], dim=1)
        v_ = torch.gather(v_, 1, ids_restore_v.unsqueeze(-1).expand(-1, -1, Dd))
        a_ = a_ + self.decoder_pos_embed_a + self.decoder_modality_a
        v_ = v_ + self.decoder_pos_embed_v + self.decoder_modality_v
        x = torch.cat([a_, v_], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred_a(x[:, :La]), self.decoder_pred_v(x[:, La:])

    @staticmethod
    def forward_contrastive(audio_rep: torch.Tensor, video_rep: torch.Tensor,
                            bidirect_contrast: bool = False, temperature: float = 0.05):
        """InfoNCE between (B, D) audio and video embeddings; returns (nce, accuracy).

        The reference default is single-direction with log_softmax over dim 0.
        """
        a = F.normalize(audio_rep, dim=-1)
        v = F.normalize(video_rep, dim=-1)
        total = a @ v.t() / temperature
        target = torch.arange(total.shape[0], device=total.device)

        def one_way(sim):
            nce = -torch.mean(torch.diag(F.log_softmax(sim, dim=0)))
            acc = torch.sum(torch.eq(torch.argmax(sim, dim=0), target)) / sim.shape[0]
            return nce, acc

        if not bidirect_contrast:
            return one_way(total)
        (n1, a1), (n2, a2) = one_way(total), one_way(total.t())
        return (n1 + n2) / 2, (a1 + a2) / 2

    def forward_mae_loss(self, target_input: torch.Tensor, pred: torch.Tensor,
                         mask: torch.Tensor, modality: str) -> torch.Tensor:
        """Mean squared error over removed patches only."""
        if modality == "a":
            target = self.patchify_audio(target_input)
        else:
            target = self.patchify_video(target_input)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L), mean loss per patch
        return (loss * mask).sum() / mask.sum()

    def forward(self, audio: torch.Tensor, imgs: torch.Tensor, mask_ratio_a: float = 0.75,
                mask_ratio_v: float = 0.75, mae_loss_weight: float = 1.0,
                contrast_loss_weight: float = 0.01, mask_mode: str = "unstructured"):
        latent, mask_a, ids_a, mask_v, ids_v, c_a, c_v = self.forward_encoder(
            audio, imgs, mask_ratio_a, mask_ratio_v, mask_mode=mask_mode)
        zero = torch.tensor(0.0, device=audio.device)
        if mae_loss_weight != 0:
            pred_a, pred_v = self.forward_decoder(latent, mask_a, ids_a, mask_v, ids_v)
            loss_mae_a = self.forward_mae_loss(audio, pred_a, mask_a, "a")
            loss_mae_v = self.forward_mae_loss(imgs, pred_v, mask_v, "v")
            loss_mae = mae_loss_weight * (loss_mae_a + loss_mae_v)
        else:
            loss_mae_a = loss_mae_v = loss_mae = zero
        if contrast_loss_weight != 0:
            loss_c, c_acc = self.forward_contrastive(c_a.mean(dim=1), c_v.mean(dim=1))
            loss_c = contrast_loss_weight * loss_c
        else:
            loss_c, c_acc = zero, zero
        return loss_mae + loss_c, loss_mae, loss_mae_a, loss_mae_v, loss_c, mask_a, mask_v, c_acc


class AVMAEFT(AVEncoder):
    """Finetuning model: encoder + ``mlp_head`` (LayerNorm, Linear) on mean-pooled tokens."""

    modes = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")

    def __init__(self, label_dim: int, img_size: int = 224, audio_length: int = 1024,
                 patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 modality_specific_depth: int = 11, num_heads: int = 12, mlp_ratio: float = 4.0,
                 norm_layer=nn.LayerNorm, norm_pix_loss: bool = False, tr_pos: bool = True):
        super().__init__(img_size, audio_length, patch_size, in_chans, embed_dim,
                         modality_specific_depth, num_heads, mlp_ratio, norm_layer, norm_pix_loss, tr_pos)
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, label_dim))
        self.initialize_weights()

    def forward(self, a: torch.Tensor, v: torch.Tensor, mode: str = "multimodal") -> torch.Tensor:
        """Logits (B, label_dim). Modes as the reference:
        multimodal (joint stream), audioonly / videoonly (modality norms),
        missingaudioonly / missingvideoonly (CAV-MAE only: average of the
        unified-norm and modality-norm passes over the one modality given —
        the names are the reference's: 'missingaudioonly' uses the audio)."""
        if mode not in self.modes:
            raise ValueError(f"{type(self).__name__} mode must be one of {self.modes}, got {mode!r}")
        if mode == "multimodal":
            x = torch.cat((self.forward_audio_specific(a), self.forward_video_specific(v)), dim=1)
            pooled = self.forward_unified(x).mean(dim=1)
        elif mode == "audioonly":
            pooled = self.forward_unified(self.forward_audio_specific(a), "a").mean(dim=1)
        elif mode == "videoonly":
            pooled = self.forward_unified(self.forward_video_specific(v), "v").mean(dim=1)
        else:
            m = "a" if mode == "missingaudioonly" else "v"
            x = self.forward_audio_specific(a) if m == "a" else self.forward_video_specific(v)
            pooled = (self.forward_unified(x).mean(dim=1) + self.forward_unified(x, m).mean(dim=1)) / 2
        return self.mlp_head(pooled)
