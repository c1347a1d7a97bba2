"""Learning-rate schedule: the reference's step decay (multiply by ``decay`` every
``step_epochs`` epochs from ``start_epoch`` on) with an optional linear warm-up in steps."""

from __future__ import annotations

import torch


def lr_factor(step: int, steps_per_epoch: int, warmup_steps: int, start_epoch: int, step_epochs: int,
              decay: float) -> float:
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    epoch = step // max(1, steps_per_epoch)
    n_decays = 0 if epoch < start_epoch else 1 + (epoch - start_epoch) // max(1, step_epochs)
    return warm * decay ** n_decays


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_steps: int,
                   start_epoch: int, step_epochs: int, decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps_per_epoch, warmup_steps, start_epoch, step_epochs, decay))
