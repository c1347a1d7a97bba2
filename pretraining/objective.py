"""The CAV-MAE pretraining objective as one module (so DDP wraps it whole).

MAE: mean squared error on the removed patches of each modality (optionally on
per-patch normalised targets). Contrastive: InfoNCE (temperature 0.05, weight 0.01
by default) between mean-pooled audio and visual embeddings, with the embeddings of
every process gathered so negatives grow with the world size.
"""

from __future__ import annotations

import torch
from torch import nn

from pretraining.distributed import gather_with_grad


class PretrainObjective(nn.Module):
    def __init__(self, model: nn.Module, mask_ratio_a: float = 0.75, mask_ratio_v: float = 0.75,
                 mae_weight: float = 1.0, contrast_weight: float = 0.01):
        super().__init__()
        self.model = model
        self.mask_ratio_a, self.mask_ratio_v = mask_ratio_a, mask_ratio_v
        self.mae_weight, self.contrast_weight = mae_weight, contrast_weight

    def forward(self, audio: torch.Tensor, video: torch.Tensor, noise_a: torch.Tensor,
                noise_v: torch.Tensor, gather: bool = True) -> dict[str, torch.Tensor]:
        """Loss terms of one batch; ``gather=False`` keeps the contrastive loss local
        (validation on one process)."""
        m = self.model
        latent, mask_a, ids_a, mask_v, ids_v, c_a, c_v = m.forward_encoder(
            audio, video, self.mask_ratio_a, self.mask_ratio_v, noise_a=noise_a, noise_v=noise_v)
        pred_a, pred_v = m.forward_decoder(latent, mask_a, ids_a, mask_v, ids_v)
        loss_mae_a = m.forward_mae_loss(audio, pred_a, mask_a, "a")
        loss_mae_v = m.forward_mae_loss(video, pred_v, mask_v, "v")
        emb_a, emb_v = c_a.mean(dim=1), c_v.mean(dim=1)
        if gather:
            emb_a, emb_v = gather_with_grad(emb_a), gather_with_grad(emb_v)
        nce, c_acc = m.forward_contrastive(emb_a, emb_v)
        loss_mae = self.mae_weight * (loss_mae_a + loss_mae_v)
        loss_c = self.contrast_weight * nce
        return {"loss": loss_mae + loss_c, "loss_mae": loss_mae, "loss_mae_a": loss_mae_a,
                "loss_mae_v": loss_mae_v, "loss_c": loss_c, "c_acc": c_acc}
