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
           "list_architectures", "list_pretrained", "register_pretrained"]


@dataclass(frozen=True)
class PretrainedCfg:
    """A released checkpoint: where it comes from and what it contains.

    url None means no public download address is known; the user supplies the
    file (``--weights PATH``). sha256 None means the publisher gave no checksum:
    the first accepted download records one next to the file and later loads
    verify it (see hub.py).
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
_SOC = "github.com/HuBohy/SocialMAE (README, 'Pretrained and Finetuned Models'; Google Drive files)"
_DBX = "https://www.dropbox.com/s/{}?dl=1"
# Drive's direct download endpoint; confirm=t skips the virus-scan page for large files where Drive
# still honours it, and the downloader follows that page's form where it does not (see drive.py).
_GDRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"

CREMA_D_EMOTIONS = ("anger", "disgust", "fear", "happy", "neutral", "sad")
BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")

_PRETRAINED: dict[str, PretrainedCfg] = {c.name: c for c in [
    PretrainedCfg(name="cav-mae-scale++", arch="cav-mae", kind="pretrain",
                  url=_DBX.format("l5t5geufdy3qvnv/audio_model.21.pth"), filename="cav-mae-scale++.pth",
                  description="CAV-MAE pretrained on AudioSet-2M, batch 256 (recommended)",
                  origin=_CAV, license="see origin"),
    PretrainedCfg(name="cav-mae-scale+", arch="cav-mae", kind="pretrain",
                  url=_DBX.format("xu8bfie6hz86oev/audio_model.25.pth"), filename="cav-mae-scale+.pth",
                  description="CAV-MAE pretrained on AudioSet-2M, batch 108 (paper results)",
                  origin=_CAV, license="see origin"),
    PretrainedCfg(name="cav-mae-base", arch="cav-mae", kind="pretrain",
                  url=_DBX.format("wxrjgr86gdhc5k8/cav-mae-base.pth"), filename="cav-mae-base.pth",
                  description="CAV-MAE pretrained on AudioSet-2M, batch 48", origin=_CAV, license="see origin"),
    PretrainedCfg(name="cav-mae-base-nonorm", arch="cav-mae", kind="pretrain",
                  url=_DBX.format("arrg7cb3e4hhjwu/cav-mae-base-nonorm.pth"), filename="cav-mae-base-nonorm.pth",
                  description="CAV-MAE pretrained without pixel-normalised targets (for inpainting)",
                  origin=_CAV, license="see origin", model_overrides={"norm_pix_loss": False}),
    PretrainedCfg(name="cav-mae-ft-audioset", arch="cav-mae", kind="finetune",
                  url=_DBX.format("hejj49zdgyyfsuh/as-full-51.2.pth"), filename="cav-mae-as-full-51.2.pth",
                  description="CAV-MAE-Scale+ finetuned on AudioSet-2M (51.2 mAP), 527 classes",
                  origin=_CAV, license="see origin", task="multilabel", task_name="audioset",
                  label_names=tuple(f"audioset_{i:03d}" for i in range(527)),
                  label_order_note="AudioSet class_labels_indices.csv order; names not bundled"),
    PretrainedCfg(name="cav-mae-ft-vggsound", arch="cav-mae", kind="finetune",
                  url=_DBX.format("q66s3mu526mj2x6/vgg_66.0.pth"), filename="cav-mae-vgg-66.0.pth",
                  description="CAV-MAE-Scale+ finetuned on VGGSound (65.9 acc), 309 classes",
                  origin=_CAV, license="see origin", task="classification", task_name="vggsound",
                  label_names=tuple(f"vggsound_{i:03d}" for i in range(309)),
                  label_order_note="VGGSound class_labels_indices_vgg.csv order; names not bundled"),
    PretrainedCfg(name="social-mae", arch="social-mae", kind="pretrain",
                  url=_GDRIVE.format("1s2giy3_tQKL_cISiYcN5lBy_ami6Dc0n"), filename="social-mae.pth",
                  description="Social-MAE pretrained on VoxCeleb2 (init from CAV-MAE)",
                  origin=_SOC, license="see origin"),
    PretrainedCfg(name="social-mae-emotion", arch="social-mae", kind="finetune",
                  url=_GDRIVE.format("1WrqznBLZ0G8HRe6POt9E4w9zVNzbfWA_"), filename="social-mae-ft-cremad.pth",
                  description="Social-MAE finetuned on CREMA-D emotion (6 classes)",
                  origin=_SOC, license="see origin", task="classification", task_name="emotion",
                  label_names=CREMA_D_EMOTIONS,
                  label_order_note="assumed alphabetical order of CREMA-D codes ANG, DIS, FEA, HAP, NEU, SAD; "
                                   "the reference does not publish its label index file"),
    PretrainedCfg(name="social-mae-laughter", arch="social-mae", kind="finetune",
                  url=_GDRIVE.format("1bjzz1oOF0vdvQ8fV3y5CU-Zxne1UeHpz"), filename="social-mae-ft-ndcme.pth",
                  description="Social-MAE finetuned on NDC-ME laughter detection (2 classes)",
                  origin=_SOC, license="see origin", task="classification", task_name="laughter",
                  label_names=("no_laughter", "laughter"),
                  label_order_note="assumed 0 = no laughter, 1 = laughter"),
    PretrainedCfg(name="social-mae-personality", arch="social-mae", kind="finetune",
                  url=_GDRIVE.format("1t8rvCVLvoLoQG85N7LToHZPF6vy9HQB2"), filename="social-mae-ft-chalearn.pth",
                  description="Social-MAE finetuned on ChaLearn First Impressions (Big Five, 0-1 scale)",
                  origin=_SOC, license="see origin", task="regression", task_name="personality",
                  label_names=BIG_FIVE,
                  label_order_note="assumed OCEAN order; ChaLearn's annotation files list extraversion, "
                                   "neuroticism, agreeableness, conscientiousness, openness"),
]}


def register_pretrained(cfg: PretrainedCfg, replace: bool = False) -> None:
    """Add a named entry (a lab's own weights, a mirror, a test server); ``load_model(cfg.name)``
    and ``--model`` then download and verify it like a released one."""
    if cfg.name in _PRETRAINED and not replace and _PRETRAINED[cfg.name] != cfg:
        raise ValueError(f"model {cfg.name!r} is already registered; pass replace=True to change it")
    get_arch_config(cfg.arch)  # an unknown architecture fails here, not at the first download
    _PRETRAINED[cfg.name] = cfg


def list_pretrained() -> list[str]:
    return list(_PRETRAINED)


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    if name not in _PRETRAINED:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(_PRETRAINED)}")
    return _PRETRAINED[name]
