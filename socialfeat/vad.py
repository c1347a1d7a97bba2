"""Speech regions from the 16 kHz audio track (for ``extract --segments speech``).

Uses Silero VAD, whose weights ship inside its PyPI package (offline, torch only):
``pip install 'socialfeat[vad]'``.
"""

from __future__ import annotations

import numpy as np
import torch

from socialfeat.errors import MissingDependencyError

_MODEL = None


def load_vad():
    """The Silero VAD model (loaded once per process); fails with one message when the
    optional extra is missing, so ``extract`` can check before any work starts."""
    global _MODEL
    if _MODEL is None:
        try:
            from silero_vad import load_silero_vad
        except ImportError:
            raise MissingDependencyError("--segments speech needs Silero VAD: pip install 'socialfeat[vad]'") from None
        _MODEL = load_silero_vad()
    return _MODEL


def speech_regions(samples: np.ndarray, sample_rate: int = 16000, min_gap: float = 0.3,
                   min_speech: float = 0.25) -> list[tuple[float, float]]:
    """[(start, end)] seconds of speech; gaps shorter than ``min_gap`` are bridged and
    regions shorter than ``min_speech`` dropped."""
    from silero_vad import get_speech_timestamps

    if len(samples) < sample_rate // 10:
        return []
    stamps = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), load_vad(),
                                   sampling_rate=sample_rate, min_silence_duration_ms=int(min_gap * 1000),
                                   min_speech_duration_ms=int(min_speech * 1000), return_seconds=False)
    return [(s["start"] / sample_rate, s["end"] / sample_rate) for s in stamps]


def speech_fraction(regions: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end) covered by speech regions."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in regions)
    return min(1.0, covered / (end - start))
