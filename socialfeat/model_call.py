"""How ``extract`` calls the model: one object that owns precision, torch.compile and batch shape.

Measured on an H100 and an H200 (released Social-MAE, batch 64, docs/performance.md): bf16
*weights* run ``encode`` at 905 / 1428 clips/s against 807-820 / 1207 for bf16 autocast (embedding
cosine to fp32 0.99999), and torch.compile of the bf16-weights model at 1311 / 1524 (18-27 s to
compile once; its kernels alone bound it at 1577 on the H200).
So on CUDA, bf16 means a bf16 copy of the model; on the CPU, bf16 stays autocast (faster
there, docs/performance.md). Compiled graphs are specialised to one input shape, so with
compilation every batch is padded to the batch size: the last, partial batch reuses the
graph instead of compiling another (outputs are sliced back; rows do not interact).

Benchmarks time this object (benchmarks/gpu_all.py), so the figures are those of extract.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Collection

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from socialfeat.models.avmae import EMBEDDINGS, Encoding

log = logging.getLogger(__name__)

OUTPUTS = ("audio", "visual", "joint", "logits")  # the Encoding fields handed back
ATTENTION = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


class ModelCall:
    """``model.encode`` as extract runs it: returns an fp32 ``Encoding`` for any precision.

    ``precision``: 'fp32', 'bf16' or 'int8' (the model already converted, encoder.prepare_models).
    ``bf16_weights``: run bf16 on a bf16 copy of the model (default: on CUDA only); False
    uses autocast. ``compile``: torch.compile(dynamic=False) of ``encode``, batches padded to
    ``batch_size`` (``pad`` overrides the padding); a compile failure falls back to eager
    with one warning. ``attention``: force one scaled-dot-product-attention kernel (a key of
    ATTENTION; default PyTorch's choice), so that benchmarks time the kernels through this path.
    """

    def __init__(self, model: nn.Module, device: torch.device, precision: str, batch_size: int,
                 kinds: Collection[str] = EMBEDDINGS, compile: bool = False, bf16_weights: bool | None = None,
                 pad: bool | None = None, attention: str | None = None):
        self.device, self.batch_size, self.kinds = device, batch_size, tuple(kinds)
        if attention is not None and attention not in ATTENTION:
            raise ValueError(f"attention must be one of {sorted(ATTENTION)} or None, got {attention!r}")
        self.attention = attention
        bf16 = precision == "bf16"
        self.bf16_weights = bf16 and (device.type == "cuda" if bf16_weights is None else bf16_weights)
        self.autocast = bf16 and not self.bf16_weights
        self.model = copy.deepcopy(model).to(torch.bfloat16) if self.bf16_weights else model
        self.pad = compile if pad is None else pad
        self._encode: Callable[..., Encoding] = self.model.encode
        self.compiled = compile
        if compile:
            self._encode = torch.compile(self.model.encode, dynamic=False)

    def __call__(self, audio: torch.Tensor | None, video: torch.Tensor) -> Encoding:
        """Embeddings (and logits) of a batch, fp32, one row per clip; batches larger than
        ``batch_size`` run in chunks."""
        n = video.shape[0]
        if n > self.batch_size:
            parts = [self(None if audio is None else audio[i:i + self.batch_size], video[i:i + self.batch_size])
                     for i in range(0, n, self.batch_size)]
            return Encoding(**{k: None if getattr(parts[0], k) is None
                               else torch.cat([getattr(p, k) for p in parts]) for k in OUTPUTS})
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        kernel = sdpa_kernel(ATTENTION[self.attention]) if self.attention else contextlib.nullcontext()
        with torch.inference_mode(), amp, kernel:
            if self.bf16_weights:
                audio = None if audio is None else audio.to(torch.bfloat16)
                video = video.to(torch.bfloat16)
            if self.pad:  # always a new inference tensor: a compiled graph also guards on that
                audio = None if audio is None else _pad(audio, self.batch_size)
                video = _pad(video, self.batch_size)
            enc = self._run(audio, video)
        return Encoding(**{k: None if getattr(enc, k) is None else getattr(enc, k)[:n].float() for k in OUTPUTS})

    def _run(self, audio: torch.Tensor | None, video: torch.Tensor) -> Encoding:
        if not self.compiled:
            return self._encode(audio, video, kinds=self.kinds)
        try:
            return self._encode(audio, video, kinds=self.kinds)
        except Exception as e:  # inductor missing a compiler, an unsupported op ...: eager still works
            log.warning("torch.compile failed, running the model eagerly: %s: %s",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            self.compiled, self._encode = False, self.model.encode
            return self._encode(audio, video, kinds=self.kinds)


def _pad(x: torch.Tensor, rows: int) -> torch.Tensor:
    """A copy of ``x`` with zero rows appended up to ``rows``."""
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])
