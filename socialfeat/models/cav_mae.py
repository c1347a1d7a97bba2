"""CAV-MAE (Gong et al., "Contrastive Audio-Visual Masked Autoencoder", ICLR 2023).

One RGB frame (B, 3, 224, 224) and a 10-s log-mel fbank (B, 1024, 128).
Reference: github.com/YuanGongND/cav-mae, src/models/cav_mae.py (BSD-2-Clause).
The algorithm lives in ``avmae.py``; CAV-MAE is its plain 2-D form.
"""

from __future__ import annotations

from socialfeat.models.avmae import AVMAE, AVMAEFT


class CAVMAE(AVMAE):
    """CAV-MAE pretraining model (encoder + decoder), reference keyword names and defaults.

    >>> m = CAVMAE(embed_dim=96, modality_specific_depth=2, num_heads=3, decoder_embed_dim=64,
    ...            decoder_depth=1, decoder_num_heads=4, audio_length=256)
    >>> m.num_audio_tokens, m.num_video_tokens
    (128, 196)
    """


class CAVMAEFT(AVMAEFT):
    """CAV-MAE finetuning model with ``mlp_head``; all five reference modes."""
