"""The settings of a pretraining run, defined once.

Each field of :class:`PretrainConfig` carries its default, its help text and the
bounds of its values; ``socialfeat pretrain`` generates its command-line options
from these fields (``socialfeat.cli``), so a new setting is one new field here.
The whole config is saved in every checkpoint, which is how ``--resume`` knows the
run it continues.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from socialfeat.clips import MIN_SECONDS
from socialfeat.errors import UsageError

ARCHITECTURES = ("social-mae", "cav-mae", "social-mae-tiny", "cav-mae-tiny")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
            choices: tuple[str, ...] | None = None, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, folder: bool = False) -> Any:
    """A config field with what its command-line option needs: help text, allowed
    ``choices`` or bounds [``low``, ``high``] (``*_open``: bound excluded), whether it
    names a ``folder``, and the option's ``flag`` when it is not ``--field-name``
    (fields sharing a flag take one value). No default: the option is required."""
    meta = {"help": help, "flag": flag, "choices": choices, "low": low, "high": high,
            "low_open": low_open, "high_open": high_open, "folder": folder}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def option_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a config field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class PretrainConfig:
    """Everything a run depends on (saved in every checkpoint). Defaults follow the
    reference scripts: Adam(0.95, 0.999), weight decay 5e-7, lr halved every 5 epochs
    from epoch 10, masking 0.75, contrastive weight 0.01."""

    inputs: list[str]  # the positional INPUTS of the command
    out: str = setting(help="Run folder (checkpoints, logs).", folder=True)
    arch: str = setting("social-mae", choices=ARCHITECTURES)
    init: str = setting("scratch", "'scratch', a registry name (e.g. social-mae, cav-mae-scale++) "
                                   "or a checkpoint path.")
    epochs: int = setting(10, low=1)
    max_steps: int | None = setting(None, "Stop after this many optimizer steps (in total, across resumes).",
                                    low=1)
    batch_size: int = setting(8, "Clips per process and micro-step.", low=2)
    accum_steps: int = setting(1, "Gradient accumulation.", low=1)
    lr: float = setting(5e-5, low=0, low_open=True)
    weight_decay: float = setting(5e-7, "Adam weight decay.", low=0)
    betas: tuple[float, float] = setting((0.95, 0.999), "Adam betas.", low=0, high=1, high_open=True)
    warmup_steps: int = setting(0, low=0)
    lr_decay: float = setting(0.5, "Step decay factor.", low=0, low_open=True)
    lr_decay_start: int = setting(10, "First epoch with decayed lr.", low=0)
    lr_decay_every: int = setting(5, "Epochs between decays.", low=1)
    mask_ratio_a: float = setting(0.75, "Fraction of patches masked (audio and visual).", flag="--mask-ratio",
                                  low=0, high=1, high_open=True)
    mask_ratio_v: float = setting(0.75, flag="--mask-ratio", low=0, high=1, high_open=True)
    mae_weight: float = setting(1.0, "Weight of the reconstruction loss.", low=0)
    contrast_weight: float = setting(0.01, "Weight of the contrastive loss.", low=0)
    norm_pix_loss: bool = setting(False, "Per-patch normalised MAE targets.")
    clip_seconds: float | None = setting(None, f"Clip length, at least {MIN_SECONDS} s [default: the architecture's].",
                                         low=MIN_SECONDS)
    clips_per_video: int | None = setting(None, "Random clips per video and epoch [default: as many as fixed "
                                                "windows fit].", low=1)
    target_order: str = setting("tokens", "Social-MAE MAE target order: the encoder's tokens, or the "
                                          "reference's (mismatched) order.", choices=("tokens", "reference"))
    video_patch_init: str = setting("inflate", "CAV-MAE -> Social-MAE init: inflate 2-D visual weights, or drop "
                                               "them as the reference does.", choices=("inflate", "reference"))
    val_fraction: float = setting(0.1, "Fraction of the videos held out for validation.", low=0, high=1,
                                  high_open=True)
    checkpoint_every: int = setting(100, "Optimizer steps between checkpoints.", low=1)
    workers: int = setting(2, "Decoding worker processes.", low=0)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))
    seed: int = setting(0)
    include: list[str] = setting([], "Glob of files to take (relative path or name); repeatable.")
    exclude: list[str] = setting([], "Glob of files to skip; repeatable.")

    def __post_init__(self) -> None:
        """One type per field whoever builds the config (the CLI passes tuples and
        paths, a checkpoint stores lists)."""
        self.inputs = [str(p) for p in self.inputs]
        self.out = str(self.out)
        self.betas = tuple(float(b) for b in self.betas)
        self.include, self.exclude = list(self.include), list(self.exclude)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), as stored in a checkpoint."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> PretrainConfig:
        """The config stored in a checkpoint by :meth:`to_dict`."""
        return cls(**saved)


def _out_of_bounds(value: Any, meta: dict[str, Any]) -> bool:
    """Whether a number is NaN, infinite or outside the field's bounds (torch takes some such
    values and fails later with a traceback, or never: a NaN clip length plans windows forever)."""
    low, high = meta.get("low"), meta.get("high")
    return (not math.isfinite(value) or (low is not None and (value <= low if meta.get("low_open") else value < low))
            or (high is not None and (value >= high if meta.get("high_open") else value > high)))


def check_settings(cfg: PretrainConfig) -> None:
    """Refuse (UsageError) a value that the command line would refuse, for callers of the
    library: the same bounds and choices, from the same field definitions."""
    from socialfeat.extract import checked_seconds

    checked_seconds(cfg.clip_seconds, "clip_seconds")
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise UsageError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            continue
        if any(_out_of_bounds(float(v), meta) for v in numbers):
            raise UsageError(f"{f.name} {value!r} is not a finite number within its bounds (see --help)")
