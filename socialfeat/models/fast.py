"""The CPU fast path: int8 linear layers, and which approximate precision a CPU runs fastest.

On a CPU without bf16 matrix units (AMX), 70 % of an fp32 ``encode`` is spent in the
linear layers, already near the fp32 peak; int8 weights with activations quantized per
call (dynamic quantization) run them on the integer units (VNNI where present) at 2-4x
the fp32 rate. Weights are quantized per output channel (symmetric), activations per
tensor on 7 bits: AVX2 CPUs without VNNI multiply u8 x s8 pairs into int16, which
saturates with 8-bit activations. Attention, norms, GELU and the patch embeddings stay
in fp32. Embedding cosine to fp32: 0.9995 or more on generated talking-face media
(docs/performance.md).

Where the CPU has AMX, bf16 autocast is faster still and closer to fp32; without AMX,
bf16 is emulated and slower than fp32 (measured 0.66x with AVX512-BF16). ``fast_precision``
picks between the two.

The packed int8 weights are not parameters: a converted model is for inference only
and is not saved (``save_checkpoint`` would write no linear weights).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from socialfeat.errors import UsageError

log = logging.getLogger(__name__)

# Kernel libraries for int8 linear layers, best first. oneDNN measured 1.0-1.35x faster than
# FBGEMM on x86 (AVX2, AVX512-VNNI, AMX) and also uses the AVX-VNNI of recent laptop CPUs.
ENGINES = ("onednn", "fbgemm", "x86", "qnnpack")
# The encoder trunk: every transformer block. Task heads and the MAE decoder stay in fp32.
TRUNK = ("blocks_a", "blocks_v", "blocks_u")


@contextlib.contextmanager
def _quantized_engine(engine: str) -> Iterator[None]:
    """Pack weights for ``engine`` without changing the process-wide setting for others."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def int8_engine() -> str:
    """The best int8 kernel library in this build of PyTorch."""
    supported = torch.backends.quantized.supported_engines
    for engine in ENGINES:
        if engine in supported:
            return engine
    raise UsageError(f"--precision int8: this PyTorch build has no int8 kernels (engines: {supported}); "
                     f"use fp32")


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and activations quantized per
    call; output in fp32."""

    def __init__(self, linear: nn.Linear, engine: str, packed: torch.ScriptObject | None = None):
        """``packed``: ``linear``'s weights already packed for ``engine`` (quantize_linears)."""
        super().__init__()
        self.in_features, self.out_features, self.engine = linear.in_features, linear.out_features, engine
        if packed is None:
            with _quantized_engine(engine):
                packed = _packed_int8(linear)
        self._packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, safe from int16 saturation on AVX2 without VNNI
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, engine={self.engine}"


def _packed_int8(linear: nn.Linear) -> torch.ScriptObject:
    """``linear``'s weights quantized per output channel and packed for the current quantized
    engine (set by the caller: the setting is process-wide, so threads must not each switch it)."""
    weight = linear.weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.5).clamp(min=1e-12).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
    bias = None if linear.bias is None else linear.bias.detach().float()
    return torch.ops.quantized.linear_prepack(qweight, bias)


def trunk_linears(model: nn.Module, parts: tuple[str, ...] = TRUNK) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, layer) of every ``nn.Linear`` under ``model.<part>``: the layers an
    approximate precision replaces (``setattr(parent, name, new)``)."""
    return [(parent, name, child) for part in parts if getattr(model, part, None) is not None
            for parent in getattr(model, part).modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear)]


def quantize_linears(model: nn.Module, engine: str | None = None, parts: tuple[str, ...] = TRUNK) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` under ``model.<part>`` by an ``Int8Linear``
    (CPU only). Returns ``model``; its fp32 linear weights are released."""
    engine = engine or int8_engine()
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise UsageError("int8 precision runs on the CPU only (use bf16 on a GPU)")
    places = trunk_linears(model, parts)
    # the layers are packed on two threads (torch's kernels release the GIL; their serial parts
    # overlap): 0.73 s instead of 1.05 s for the released size on 2 cores. Two, not one per core:
    # each calling thread runs its own team of torch's threads, so more would multiply them
    with _quantized_engine(engine), ThreadPoolExecutor(min(2, torch.get_num_threads())) as pool:
        packed = list(pool.map(lambda place: _packed_int8(place[2]), places))
    for (parent, name, child), weights in zip(places, packed):
        setattr(parent, name, Int8Linear(child, engine, weights))
    model.int8_engine = engine
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """Whether this CPU has bf16 matrix units (AMX) that this process may use: the CPU
    flags and the kernel's permission (Linux grants it per process on request)."""
    cpu = getattr(torch._C, "_cpu", None)
    try:
        if cpu is not None and hasattr(cpu, "_is_amx_tile_supported"):
            return bool(cpu._is_amx_tile_supported() and cpu._init_amx())
    except RuntimeError:
        return False
    return _cpuinfo_has("amx_bf16")


def _cpuinfo_has(flag: str) -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in line.split() for line in text.splitlines() if line.startswith("flags"))


def fast_precision(device: torch.device) -> str:
    """The fastest approximate precision for ``device``: bf16 on a GPU and on CPUs with AMX,
    int8 linear layers on other CPUs (where bf16 is emulated and slower than fp32)."""
    if device.type != "cpu" or cpu_has_amx():
        return "bf16"
    return "int8"


def cpu_description() -> str:
    """CPU model name and the instruction sets that decide the fast path, for benchmark output."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = getattr(torch._C, "_cpu", None)
    flags = []
    for label, fn in (("AVX2", "_is_avx2_supported"), ("AVX-512", "_is_avx512_supported"),
                      ("AVX512-VNNI", "_is_avx512_vnni_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        if cpu is not None and hasattr(cpu, fn) and getattr(cpu, fn)():
            flags.append(label)
    if cpu_has_amx():
        flags.append("AMX")
    return f"{name} ({', '.join(flags) or 'no AVX2'}; torch capability {torch.backends.cpu.get_cpu_capability()})"
