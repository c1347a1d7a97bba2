"""``load_model``: a ready model from a registry name, a socialfeat checkpoint or an
official state dict (kept apart from checkpoint.py so that the download code can
check a file against an architecture without importing the loader).

The model is built on the meta device and the weights are assigned to it: no
random initialisation of weights that are about to be replaced (about 1.8 s for
the released size), and no second copy of them in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from socialfeat.models.checkpoint import (
    FORMAT,
    HEAD_FORMAT,
    CheckpointError,
    ModelInfo,
    build_loaded,
    infer_info,
    own_memory,
    read_checkpoint,
    strip_prefix,
    unwrap_state_dict,
)
from socialfeat.models.digest import file_digest
from socialfeat.models.hub import cache_dir, fetch
from socialfeat.models.registry import (
    PretrainedCfg,
    get_pretrained_cfg,
    list_pretrained,
)


def load_model(path_or_name: str | Path, config: dict[str, Any] | str | Path | None = None,
               cache: str | Path | None = None, device: str | torch.device = "cpu", mapped: bool = False) -> nn.Module:
    """A ready model (eval mode) from a registry name, a socialfeat checkpoint or an
    official state dict. ``config`` (dict or JSON file with ModelInfo fields, or a
    registry name) describes a bare state dict whose shapes are not the released ones.
    ``mapped``: leave the weights as read through the file's memory map (not yet read from
    disk); the caller moves them to a GPU or calls ``own_memory`` (extract, after forking).

    A ``str`` that names a registry entry is that entry, whatever the working directory holds
    (a file or folder ``social-mae`` there must not replace the released weights); pass a
    ``Path`` to load a file of that name."""
    name = str(path_or_name)
    registry_cfg = None
    if isinstance(path_or_name, str) and name in list_pretrained():
        registry_cfg = get_pretrained_cfg(name)
        path = fetch(name, cache)
    else:
        path = Path(path_or_name)
    obj = read_checkpoint(path)
    if obj.get("format") == HEAD_FORMAT:  # its tensors would be taken for a (broken) state dict
        raise CheckpointError(f"{path}: a task head from `socialfeat finetune --probe`, not a model; "
                              f"give it with --tasks NAME={path}")
    if obj.get("format") == FORMAT:
        info = ModelInfo.from_dict(obj["config"])
        state_dict = strip_prefix(obj["state_dict"])
    else:
        state_dict = unwrap_state_dict(obj)
        info = _describe_bare(state_dict, path, registry_cfg, config)
    model = build_loaded(info, state_dict, str(path))
    # a cached download's recorded digest; other files are hashed once, then their digest is kept
    info.sha256 = file_digest(path, records=cache_dir(cache) / "digests")
    info.source = str(path)
    if not mapped:
        own_memory(model)
    return model.to(device).eval()


def _describe_bare(state_dict: dict[str, torch.Tensor], path: Path, registry_cfg: PretrainedCfg | None,
                   config: dict[str, Any] | str | Path | None) -> ModelInfo:
    """What a bare state dict is: its registry entry, a given config, or inferred from its shapes."""
    if isinstance(config, str) and config in list_pretrained():
        registry_cfg, config = get_pretrained_cfg(config), None
    if registry_cfg is not None:
        return ModelInfo.from_registry(registry_cfg)
    if config is not None:
        return ModelInfo.from_dict(config if isinstance(config, dict) else json.loads(Path(config).read_text()))
    return infer_info(state_dict, path.stem, source=str(path))
