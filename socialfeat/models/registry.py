"""Architectures (JSON data in ``model_configs/``) and named released weights.

Architectures and weights are kept apart (as open_clip and timm do): an
architecture says how to build the network and prepare its inputs; a pretrained
entry says where its weights come from, which architecture they fit, and what
a task head predicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from socialfeat.architectures import (  # re-exported: the registry is where users look
    add_arch_config,
    get_arch_config,
    list_architectures,
)
from socialfeat.errors import UnknownModelError
from socialfeat.models.families import class_name, model_kwargs
from socialfeat.preprocess import PreprocessSpec

__all__ = ["PretrainedCfg", "UnknownModelError", "add_arch_config", "get_arch_config", "get_pretrained_cfg",
           "list_architectures", "list_pretrained"]


@dataclass(frozen=True)
class PretrainedCfg:
    """A released checkpoint: where it comes from and what it contains.

    url None means no public download address is known; the user supplies the
    file (``--weights PATH``). sha256 None means the publisher gave no checksum:
    the first download records one next to the file and later loads verify it.
    """

    name: str
    arch: str
    kind: str  # 'pretrain' (encoder + MAE decoder) or 'finetune' (encoder + mlp_head)
    url: str | None
    filename: str
    description: str
    origin: str
    license: str
    sha256: str | None = None
    task: str | None = None  # 'classification' | 'multilabel' | 'regression'
    task_name: str | None = None  # e.g. 'emotion', 'laughter', 'personality'
    label_names: tuple[str, ...] = ()
    label_order_note: str = ""
    model_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(get_arch_config(self.arch)["preprocess"])

    @property
    def model_class(self) -> str:
        return class_name(get_arch_config(self.arch)["family"], self.kind)

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = model_kwargs(get_arch_config(self.arch)["model"], self.kind, len(self.label_names))
        kwargs.update(self.model_overrides)
        return kwargs


_CAV = "github.com/YuanGongND/cav-mae (BSD-2-Clause code; weights released with the paper)"
_SOC = "github.com/HuBohy/SocialMAE (weights announced in the README; no public address yet)"
_DBX = "https://www.dropbox.com/s/{}?dl=1"

CREMA_D_EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")

_PRETRAINED: dict[str, PretrainedCfg] = {c.name: c for c in [
    PretrainedCfg("cav-mae-scale++", "cav-mae", "pretrain", _DBX.format("l5t5geufdy3qvnv/audio_model.21.pth"),
                  "cav-mae-scale++.pth", "CAV-MAE pretrained on AudioSet-2M, batch 256 (recommended)", _CAV,
                  "see origin"),
    PretrainedCfg("cav-mae-scale+", "cav-mae", "pretrain", _DBX.format("xu8bfie6hz86oev/audio_model.25.pth"),
                  "cav-mae-scale+.pth", "CAV-MAE pretrained on AudioSet-2M, batch 108 (paper results)", _CAV,
                  "see origin"),
    PretrainedCfg("cav-mae-base", "cav-mae", "pretrain", _DBX.format("wxrjgr86gdhc5k8/cav-mae-base.pth"),
                  "cav-mae-base.pth", "CAV-MAE pretrained on AudioSet-2M, batch 48", _CAV, "see origin"),
    PretrainedCfg("cav-mae-base-nonorm", "cav-mae", "pretrain",
                  _DBX.format("arrg7cb3e4hhjwu/cav-mae-base-nonorm.pth"), "cav-mae-base-nonorm.pth",
                  "CAV-MAE pretrained without pixel-normalised targets (for inpainting)", _CAV, "see origin",
                  model_overrides={"norm_pix_loss": False}),
    PretrainedCfg("cav-mae-ft-audioset", "cav-mae", "finetune", _DBX.format("hejj49zdgyyfsuh/as-full-51.2.pth"),
                  "cav-mae-as-full-51.2.pth", "CAV-MAE-Scale+ finetuned on AudioSet-2M (51.2 mAP), 527 classes",
                  _CAV, "see origin", task="multilabel", task_name="audioset",
                  label_names=tuple(f"audioset_{i:03d}" for i in range(527)),
                  label_order_note="AudioSet class_labels_indices.csv order; names not bundled"),
    PretrainedCfg("cav-mae-ft-vggsound", "cav-mae", "finetune", _DBX.format("q66s3mu526mj2x6/vgg_66.0.pth"),
                  "cav-mae-vgg-66.0.pth", "CAV-MAE-Scale+ finetuned on VGGSound (65.9 acc), 309 classes",
                  _CAV, "see origin", task="classification", task_name="vggsound",
                  label_names=tuple(f"vggsound_{i:03d}" for i in range(309)),
                  label_order_note="VGGSound class_labels_indices_vgg.csv order; names not bundled"),
    PretrainedCfg("social-mae", "social-mae", "pretrain", None, "social-mae.pth",
                  "Social-MAE pretrained on VoxCeleb2 (init from CAV-MAE)", _SOC, "see origin"),
    PretrainedCfg("social-mae-emotion", "social-mae", "finetune", None, "social-mae-ft-cremad.pth",
                  "Social-MAE finetuned on CREMA-D emotion (6 classes)", _SOC, "see origin",
                  task="classification", task_name="emotion", label_names=CREMA_D_EMOTIONS,
                  label_order_note="assumed alphabetical order of CREMA-D codes ANG, DIS, FEA, HAP, NEU, SAD; "
                                   "the reference does not publish its label index file"),
    PretrainedCfg("social-mae-laughter", "social-mae", "finetune", None, "social-mae-ft-ndcme.pth",
                  "Social-MAE finetuned on NDC-ME laughter detection (2 classes)", _SOC, "see origin",
                  task="classification", task_name="laughter", label_names=("no_laughter", "laughter"),
                  label_order_note="assumed 0 = no laughter, 1 = laughter"),
    PretrainedCfg("social-mae-personality", "social-mae", "finetune", None, "social-mae-ft-chalearn.pth",
                  "Social-MAE finetuned on ChaLearn First Impressions (Big Five, 0-1 scale)", _SOC, "see origin",
                  task="regression", task_name="personality", label_names=BIG_FIVE,
                  label_order_note="assumed OCEAN order; ChaLearn's annotation files list extraversion, "
                                   "neuroticism, agreeableness, conscientiousness, openness"),
]}


def list_pretrained() -> list[str]:
    return list(_PRETRAINED)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    if name not in _PRETRAINED:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(_PRETRAINED)}")
    return _PRETRAINED[name]
