"""How close is "the same numbers" when the fixtures were made on another CPU.

The reference fixtures were computed in float32 on one machine. Another x86 CPU
(AMD vs Intel, AVX2 vs AVX-512/AMX) runs other FFT and matrix kernels, whose
float32 results differ in the last bits. Both checks below are sized from a
measurement: our own computation in float64 (a stand-in for "other kernels",
it differs from the fixture by exactly the fixture's own rounding) and
deliberately wrong variants (figures in the docstrings, measured on the shared
fixtures). Each check keeps a wide margin on both sides.
"""

from __future__ import annotations

import torch


def fbank_tolerance(reference: torch.Tensor) -> torch.Tensor:
    """Per-element tolerance for raw log-mel values, growing with the bin's depth
    below its frame's loudest bin.

    float32 rounding of the power spectrum is relative to the frame's energy, so in
    the log domain it is amplified where a bin is quiet: measured float64-vs-fixture
    differences are 2e-6 within 5 nepers of the frame maximum, 1e-4 at 10-15, up to
    1e-3 at 15-20 (an AMD EPYC reported 1.4e-3). ``1e-4 * exp(depth / 4)`` gives
    float64 at most 0.11 of this budget, while the smallest wrong variant measured,
    dither 1e-5 (a third of one 16-bit step), uses 5x it; a wrong window, pre-emphasis,
    mel range, frame length, DC removal, power/magnitude or snip_edges use 10^3-10^5 x.
    """
    depth = reference.max(dim=-1, keepdim=True).values - reference
    return 1e-4 * torch.exp(depth / 4)


def fbank_error_ratio(ours: torch.Tensor, reference: torch.Tensor, std: float = 1.0) -> float:
    """Largest |ours - reference| as a fraction of its tolerance (<= 1 passes).

    For normalised features ((x - mean) / std) pass the ``std``: depth is measured on
    the raw scale and the tolerance divided by it.
    """
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    tol = fbank_tolerance(reference.double() * std) / std + 1e-6
    return ((ours.double() - reference.double()).abs() / tol).max().item()


# Model outputs: relative RMS error ||d|| / ||ref|| and largest error against max |ref|.
# Measured (both families, every fixture entry): float64 vs fixture rel. RMS <= 7.1e-7 and
# max <= 1.4e-6 of max |ref|. Wrong variants: LayerNorm eps 1e-6 instead of 1e-5 gives
# rel. RMS 4e-6 - 2e-3 in every entry, tanh-approximated GELU 8e-6 - 1.6e-5 on latents,
# token features and reconstructions.
MODEL_REL_RMS = 4e-6
MODEL_REL_MAX = 2e-5


def model_error(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(relative RMS error, largest error / max |reference|) in float64."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    a, b = ours.double(), reference.double()
    norm, peak = b.norm().item(), b.abs().max().item()
    diff = a - b
    if norm == 0:
        return diff.norm().item(), diff.abs().max().item()
    return diff.norm().item() / norm, diff.abs().max().item() / peak


def assert_model_close(ours: torch.Tensor, reference: torch.Tensor, what: str = "") -> None:
    rms, peak = model_error(ours, reference)
    assert rms <= MODEL_REL_RMS and peak <= MODEL_REL_MAX, \
        f"{what}: relative RMS error {rms:.2e} (limit {MODEL_REL_RMS}), max {peak:.2e} (limit {MODEL_REL_MAX})"
