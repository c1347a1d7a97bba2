"""Which class builds a model, and with which constructor arguments.

A model is (architecture, kind, labels): the architecture's kwargs
(``model_configs/*.json``) are those of the pretraining class; a 'finetune'
model drops the MAE decoder and pretraining-only options, gains a head of
``label_dim`` outputs, and has trainable position tables, as the reference
finetuning classes do. Registry, checkpoints and ``finetune`` all build through here.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from socialfeat.errors import UnknownModelError
from socialfeat.models.cav_mae import CAVMAE, CAVMAEFT
from socialfeat.models.social_mae import SocialMAE, SocialMAEFT

KINDS = ("pretrain", "finetune")
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "CAVMAE": CAVMAE, "CAVMAEFT": CAVMAEFT, "SocialMAE": SocialMAE, "SocialMAEFT": SocialMAEFT}
_CLASS_NAMES = {("cav-mae", "pretrain"): "CAVMAE", ("cav-mae", "finetune"): "CAVMAEFT",
                ("social-mae", "pretrain"): "SocialMAE", ("social-mae", "finetune"): "SocialMAEFT"}
PRETRAIN_ONLY = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads", "target_order")


def class_name(family: str, kind: str) -> str:
    """'SocialMAEFT' for ('social-mae', 'finetune'), and so on."""
    if (family, kind) not in _CLASS_NAMES:
        raise UnknownModelError(f"no model class for family {family!r} and kind {kind!r}")
    return _CLASS_NAMES[(family, kind)]


def model_class(name: str) -> type[nn.Module]:
    if name not in MODEL_CLASSES:
        raise UnknownModelError(f"unknown model class {name!r}; known: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[name]


def model_kwargs(arch_kwargs: dict[str, Any], kind: str, label_dim: int = 0) -> dict[str, Any]:
    """Constructor kwargs of the ``kind`` class from an architecture's (pretraining) kwargs."""
    if kind not in KINDS:
        raise UnknownModelError(f"kind must be one of {KINDS}, got {kind!r}")
    kwargs = {k: v for k, v in arch_kwargs.items() if k != "label_dim"}
    if kind == "finetune":
        kwargs = {k: v for k, v in kwargs.items() if k not in PRETRAIN_ONLY}
        kwargs.update(label_dim=label_dim, tr_pos=True)
    return kwargs
