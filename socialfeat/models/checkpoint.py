"""Reading, writing and building models from checkpoints.

Two formats are accepted everywhere a checkpoint is:
- socialfeat's own: {'format': 'socialfeat', 'config': {...}, 'state_dict': {...}} with
  the architecture kwargs, preprocessing spec, class and head metadata, so it
  needs no other flags;
- official (bare) state dicts of the released models, with or without the
  DataParallel ``module.`` prefix; their configuration comes from a registry
  entry, an explicit config, or, for the released ViT-B shapes, from the keys.

Everything is read with ``torch.load(weights_only=True)``: a file that needs
arbitrary pickled code is refused.
"""

from __future__ import annotations

import itertools
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from socialfeat.architectures import get_arch_config
from socialfeat.atomic import atomic_path
from socialfeat.errors import SocialfeatError
from socialfeat.models.families import (
    MODEL_CLASSES,
    class_name,
    model_class,
    model_kwargs,
)
from socialfeat.models.registry import PretrainedCfg
from socialfeat.preprocess import PreprocessSpec

FORMAT = "socialfeat"
FORMAT_VERSION = 1
HEAD_FORMAT = "socialfeat-head"  # a task head of `finetune --probe` (heads.py): not a model


class CheckpointError(SocialfeatError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class ModelInfo:
    """What a loaded model is: attached to every model built here as ``model.info``."""

    name: str
    model_class: str
    model_kwargs: dict[str, Any]
    preprocess: PreprocessSpec
    task: str | None = None
    task_name: str | None = None
    label_names: list[str] = field(default_factory=list)
    sha256: str | None = None
    source: str | None = None

    @property
    def family(self) -> str:
        return self.preprocess.family

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model_class": self.model_class, "model_kwargs": dict(self.model_kwargs),
                "preprocess": self.preprocess.to_dict(), "task": self.task, "task_name": self.task_name,
                "label_names": list(self.label_names)}

    @classmethod
    def from_registry(cls, cfg: PretrainedCfg) -> "ModelInfo":
        """What a released checkpoint of the registry is (its state dict carries no config)."""
        return cls(name=cfg.name, model_class=cfg.model_class, model_kwargs=cfg.model_kwargs(),
                   preprocess=cfg.preprocess, task=cfg.task, task_name=cfg.task_name,
                   label_names=list(cfg.label_names))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        return cls(name=d["name"], model_class=d["model_class"], model_kwargs=dict(d["model_kwargs"]),
                   preprocess=PreprocessSpec.from_dict(d["preprocess"]), task=d.get("task"),
                   task_name=d.get("task_name"), label_names=list(d.get("label_names") or []))


def build_model(info: ModelInfo) -> nn.Module:
    """Instantiate the class named in ``info`` (random init) and attach ``info``."""
    if info.model_class not in MODEL_CLASSES:
        raise CheckpointError(f"unknown model class {info.model_class!r}")
    model = model_class(info.model_class)(**info.model_kwargs)
    model.info = info
    model.preprocess = info.preprocess
    return model


def create_model(arch: str, kind: str = "pretrain", label_names: list[str] | None = None,
                 task: str | None = None, task_name: str | None = None, **overrides: Any) -> nn.Module:
    """A randomly initialised model of a registered architecture (for pretraining
    from scratch and for tests). kind 'finetune' adds a head over ``label_names``."""
    cfg = get_arch_config(arch)
    kwargs = model_kwargs(cfg["model"], kind, len(label_names or []))
    kwargs.update(overrides)
    info = ModelInfo(name=arch, model_class=class_name(cfg["family"], kind), model_kwargs=kwargs,
                     preprocess=PreprocessSpec.from_dict(cfg["preprocess"]), task=task,
                     task_name=task_name, label_names=list(label_names or []))
    return build_model(info)


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Remove a DataParallel/DDP prefix when every key carries it."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _load(path: Path) -> Any:
    """torch.load of tensors only, memory-mapped where the file's format allows: the tensors are read
    from the page cache when first used instead of copied at once (0.04 s instead of 0.4-0.5 s for
    the released Social-MAE size here, the same total once they are used), so that `extract` forks
    its decoding workers from a small process and they decode while the weights go to the GPU. Files
    in the legacy (pre-zip) format are read as before."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file safely (tensors and plain containers only). ``label`` names
    the file in messages (e.g. the URL of a download not yet in place)."""
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: no such checkpoint file")
    try:
        obj = _load(path)
    except pickle.UnpicklingError as e:
        with open(path, "rb") as f:
            if f.read(1) not in (b"P", b"\x80"):  # neither a zip archive (PK) nor a pickle: no checkpoint at all
                raise CheckpointError(f"{label}: not a readable PyTorch checkpoint (neither a zip archive "
                                      f"nor a pickle)") from e
        raise CheckpointError(
            f"{label}: refused to load: the file contains pickled Python objects beyond tensors "
            f"(weights_only=True failed: {str(e).splitlines()[0]}). Re-save only its state_dict "
            f"from a trusted environment.") from e
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"{label}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{label}: expected a dict, found {type(obj).__name__}")
    return obj


def unwrap_state_dict(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint (under 'state_dict' or 'model', or at the top), unprefixed."""
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("no tensors found in checkpoint")
    return strip_prefix(sd)


def build_loaded(info: ModelInfo, state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    """``info``'s model holding ``state_dict``'s tensors (checked as in load_state_dict_strict).

    Built on the meta device and filled with ``assign=True``: no random initialisation of
    weights about to be replaced, and no second copy of them in memory (about 1.5 s and
    0.7 GB less for a ViT-B checkpoint). Floating tensors take the model's dtype (float32).
    """
    with torch.device("meta"), _NoInitialisation():
        model = build_model(info)
    check_state_dict(model, state_dict, source)
    own = model.state_dict()
    state_dict = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


# The initialisers that layers and build_model call. On the meta device they compute nothing, but
# they go through torch's decompositions: 0.3 s for the released size, and the first normal_ imports
# the compiler stack (0.7 s more). nn.init's functions and these tensor methods dispatch through
# __torch_function__, so a mode (per thread, unlike patching nn.init) can skip them.
_INITIALISERS = frozenset([getattr(nn.init, name) for name in (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_")] + [torch.Tensor.uniform_, torch.Tensor.normal_])


class _NoInitialisation(TorchFunctionMode):
    """Initialisers as no-ops, on this thread only, while a model is built on the meta device to
    receive a checkpoint's tensors (what transformers' ``no_init_weights`` does by patching nn.init
    for every thread)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def own_memory(module: nn.Module) -> nn.Module:
    """Give tensors read through a memory map (read_checkpoint) memory of their own: a checkpoint
    rewritten in place while the model runs must not change its weights under it (or end the process
    with SIGBUS when the file is cut short). On one thread: extract calls it beside busy decoding
    workers, where torch's threads for the copy spin on their cores (released Social-MAE size, 2
    cores, two decoders running: 0.35 s of CPU on one thread, 0.65-0.9 s on two; idle, 0.34 s wall
    on one, 0.19 on two: touching 0.77 GB of fresh memory, page by page or populated at once alike)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for t in itertools.chain(module.parameters(), module.buffers()):
                t.data = t.data.clone()
    finally:
        torch.set_num_threads(threads)
    return module


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with the mismatch explained in words."""
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True)


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError, in words, unless ``state_dict`` has exactly ``model``'s keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        def show(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {show(unexpected)}")
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:4]))
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))


def check_fits(cfg: PretrainedCfg, path: str | Path, label: str | None = None) -> None:
    """Raise CheckpointError unless ``path`` loads with weights_only=True and its keys and shapes
    are those of the entry's architecture. The model is built on the meta device: no memory, no init."""
    obj = read_checkpoint(path, label)
    state_dict = strip_prefix(obj["state_dict"]) if obj.get("format") == FORMAT else unwrap_state_dict(obj)
    with torch.device("meta"):
        model = build_model(ModelInfo.from_registry(cfg))
    check_state_dict(model, state_dict, label or str(path))


def infer_info(state_dict: dict[str, torch.Tensor], name: str, source: str | None = None) -> ModelInfo:
    """Configuration of a bare official state dict from its keys and shapes.

    Family from the visual patch embedding (Conv3d -> Social-MAE), class from the
    presence of a decoder or head, sizes from shapes. Head count is not visible
    in shapes; 64-dim heads (ViT-B: 12) are assumed, as in every released model.
    ``source`` names the file in errors (default ``name``).
    """
    try:
        w_v = state_dict["patch_embed_v.proj.weight"]
        pos_a = state_dict["pos_embed_a"]
    except KeyError as e:
        raise CheckpointError(f"{source or name}: not a CAV-MAE / Social-MAE state dict (no {e.args[0]})") from None
    family = "social-mae" if w_v.dim() == 5 else "cav-mae"
    kind = "finetune" if "mlp_head.1.weight" in state_dict else "pretrain"
    cfg = get_arch_config(family)
    label_dim = state_dict["mlp_head.1.weight"].shape[0] if kind == "finetune" else 0
    kwargs = model_kwargs(cfg["model"], kind, label_dim)
    embed_dim, patch = w_v.shape[0], w_v.shape[2]
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks_a.")})
    n_tokens_v = state_dict["pos_embed_v"].shape[1]
    kwargs.update(embed_dim=embed_dim, patch_size=patch, in_chans=w_v.shape[1], modality_specific_depth=depth,
                  num_heads=max(1, embed_dim // 64), audio_length=pos_a.shape[1] * patch // (128 // patch))
    if family == "social-mae":
        kwargs["stride"] = w_v.shape[4]
        kwargs["n_frame"] = n_tokens_v // (kwargs["img_size"] // patch) ** 2 * kwargs["stride"]
    else:
        kwargs["img_size"] = int(round(n_tokens_v ** 0.5)) * patch
    if kind == "pretrain":
        kwargs["decoder_embed_dim"] = state_dict["decoder_embed.weight"].shape[0]
        kwargs["decoder_depth"] = len({k.split(".")[1] for k in state_dict if k.startswith("decoder_blocks.")})
        kwargs["decoder_num_heads"] = max(1, kwargs["decoder_embed_dim"] // 32)
    return ModelInfo(name=name, model_class=class_name(family, kind), model_kwargs=kwargs,
                     preprocess=PreprocessSpec.from_dict(cfg["preprocess"]),
                     label_names=[f"class_{i}" for i in range(label_dim)])


def save_checkpoint(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights + config + preprocessing spec atomically (temp file, then rename)."""
    info: ModelInfo = getattr(model, "info", None)
    if info is None:
        raise CheckpointError("model has no .info; build it with create_model or load_model")
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": info.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if extra:
        payload["extra"] = extra
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
