"""Self-supervised pretraining of CAV-MAE / Social-MAE on in-domain videos (``socialfeat pretrain``).

Layout (as facebookresearch/mae): ``config.py`` (the run's settings, from which
``cli_options.py`` makes the command-line options), ``data.py`` (random clips per epoch,
reusing socialfeat's walking, decoding and preprocessing; damaged clips skipped),
``init.py`` (start weights, 2-D -> 3-D inflation), ``objective.py`` (the loss, with
contrastive negatives gathered across processes), ``schedule.py`` (step decay + warm-up),
``run_folder.py`` (what a run writes, and never over an earlier run unasked), ``engine.py``
(the training loop as named steps: checkpoints, resume, logs, validation) and
``distributed.py`` (torchrun / DDP helpers).
"""

from pretraining.config import PretrainConfig
from pretraining.engine import pretrain

__all__ = ["PretrainConfig", "pretrain"]
