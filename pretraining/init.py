"""Starting weights for pretraining: scratch, a registry name, or a checkpoint file.

Initialising Social-MAE from CAV-MAE meets shape mismatches in the visual parts.
The reference drops those tensors (they keep their fresh initialisation);
socialfeat by default *inflates* them: the 2-D patch kernel is repeated over the
``stride`` frames of a tubelet and divided by ``stride`` (a still video then gives
the image model's response), position tables are repeated over time, and the
decoder's visual output layer is repeated over the tubelet's frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from socialfeat.errors import UsageError
from socialfeat.models import read_checkpoint, strip_prefix
from socialfeat.models.hub import fetch
from socialfeat.models.registry import list_pretrained

log = logging.getLogger(__name__)
MIN_ENCODER_SHARE = 0.5  # below this share of the encoder's tensors loaded, --init is not a backbone


def _source_state_dict(init: str) -> dict[str, torch.Tensor]:
    if init not in list_pretrained() and not Path(init).is_file():
        raise UsageError(f"--init {init}: no such checkpoint file, nor a registry name ({', '.join(list_pretrained())})")
    path = fetch(init) if init in list_pretrained() and not Path(init).exists() else Path(init)
    obj = read_checkpoint(path)
    sd = obj["state_dict"] if obj.get("format") == "socialfeat" else obj
    for key in ("state_dict", "model"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return strip_prefix({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})


def inflate(key: str, src: torch.Tensor, dst: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    """A 2-D (CAV-MAE) visual tensor reshaped for the 3-D (Social-MAE) model, or None."""
    stride = getattr(model.patch_embed_v, "stride", None)
    if stride is None:
        return None
    frames = model.num_video_tokens // (src.shape[1] if key.endswith("pos_embed_v") else 1)
    if key == "patch_embed_v.proj.weight" and src.dim() == 4 and dst.dim() == 5:
        return src.unsqueeze(-1).repeat(1, 1, 1, 1, stride) / stride
    if key.endswith("pos_embed_v") and dst.shape[1] == src.shape[1] * frames:
        return src.repeat_interleave(frames, dim=1)  # tokens are (h, w, t), t fastest
    if key.startswith("decoder_pred_v.") and dst.shape[0] == src.shape[0] * stride:
        p, c = model.patch_size, model.in_chans
        rest = src.shape[1:]
        if getattr(model, "target_order", "reference") == "tokens":  # values (p, q, s, c)
            x = src.reshape(p, p, 1, c, *rest).expand(p, p, stride, c, *rest)
        else:  # values (s, p, q, c)
            x = src.reshape(1, p, p, c, *rest).expand(stride, p, p, c, *rest)
        return x.reshape(dst.shape).clone()
    return None


def load_initial_weights(model: nn.Module, init: str, video_patch_init: str = "inflate") -> dict[str, list[str]]:
    """Copy what fits from the checkpoint ``init`` into ``model``; see copy_matching_weights."""
    report = copy_matching_weights(model, _source_state_dict(init), video_patch_init)
    check_backbone(model, init, report)
    return report


def is_encoder_key(key: str) -> bool:
    """Whether a state-dict key belongs to the encoder (what extract uses), not the MAE decoder."""
    return not key.startswith(("decoder", "mask_token"))


def check_backbone(model: nn.Module, init: str, report: dict[str, list[str]]) -> None:
    """Refuse starting weights that give less than half of the encoder (a probe head, another
    architecture: the run would train from scratch under a name that says otherwise); say at
    WARNING level how much of the encoder stayed fresh when some did, at INFO level otherwise."""
    encoder = [k for k in model.state_dict() if is_encoder_key(k)]
    taken = set(report["loaded"]) | set(report["inflated"])
    n_taken = sum(k in taken for k in encoder)
    counts = (f"{len(report['loaded'])} tensors loaded, {len(report['inflated'])} inflated, "
              f"{len(report['fresh'])} fresh, {len(report['ignored'])} ignored")
    if n_taken < MIN_ENCODER_SHARE * len(encoder):
        raise UsageError(f"--init {init} is not a backbone of {model.info.name}: it gives {n_taken} of the "
                         f"encoder's {len(encoder)} tensors ({counts})")
    level = logging.WARNING if n_taken < len(encoder) else logging.INFO
    log.log(level, "init from %s: %d of the encoder's %d tensors taken, the others fresh (%s)", init, n_taken,
            len(encoder), counts)


def copy_matching_weights(model: nn.Module, src: dict[str, torch.Tensor],
                          video_patch_init: str = "inflate") -> dict[str, list[str]]:
    """Copy what fits from the state dict ``src`` into ``model`` (inflating 2-D visual tensors when
    asked); returns {'loaded', 'inflated', 'fresh', 'ignored'} key lists."""
    own = model.state_dict()
    report = {"loaded": [], "inflated": [], "fresh": [], "ignored": sorted(set(src) - set(own))}
    new = {}
    for key, dst in own.items():
        if key not in src:
            report["fresh"].append(key)
        elif src[key].shape == dst.shape:
            new[key] = src[key]
            report["loaded"].append(key)
        else:
            grown = inflate(key, src[key], dst, model) if video_patch_init == "inflate" else None
            if grown is not None:
                new[key] = grown
                report["inflated"].append(key)
            else:
                report["fresh"].append(key)
    model.load_state_dict(new, strict=False)
    return report
