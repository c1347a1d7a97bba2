"""Self-supervised pretraining of CAV-MAE / Social-MAE on in-domain videos (``socialfeat pretrain``).

Layout (as facebookresearch/mae): ``data.py`` (random clips per epoch, reusing socialfeat's
walking, decoding and preprocessing), ``init.py`` (start weights, 2-D -> 3-D inflation),
``objective.py`` (the loss, with contrastive negatives gathered across processes),
``schedule.py`` (step decay + warm-up), ``engine.py`` (the training loop, checkpoints,
resume, logs, validation) and ``distributed.py`` (torchrun / DDP helpers).
"""

from pretraining.engine import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
