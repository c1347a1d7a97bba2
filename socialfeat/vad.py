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


SAMPLE_RATE = 16000
WINDOW = 512  # samples per speech probability at 16 kHz (Silero's frame)


class SpeechDetector:
    """Silero VAD fed the track piece by piece, as ``get_speech_timestamps`` runs it over the whole
    track (fresh model state, 512-sample windows in order, the last one zero-padded), keeping one
    probability per window (31 a second) instead of the track: a recording of hours is not held in
    memory (3 h of 16 kHz float32 audio is 0.7 GB per decoding worker)."""

    def __init__(self) -> None:
        self.model = load_vad()
        self.model.reset_states()
        self.pending = np.zeros(0, np.float32)  # samples short of a whole window
        self.probs: list[float] = []
        self.n_samples = 0

    def feed(self, samples: np.ndarray) -> None:
        """The next samples of the track (16 kHz mono)."""
        self.n_samples += len(samples)
        held = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32)])
        whole = len(held) // WINDOW * WINDOW
        for at in range(0, whole, WINDOW):
            self.probs.append(self._prob(held[at:at + WINDOW]))
        self.pending = held[whole:]

    def regions(self, min_gap: float = 0.3, min_speech: float = 0.25) -> list[tuple[float, float]]:
        """[(start, end)] seconds of speech in what was fed; gaps shorter than ``min_gap`` are bridged
        and regions shorter than ``min_speech`` dropped."""
        from silero_vad.utils_vad import get_speech_timestamps_from_probs

        if self.n_samples < SAMPLE_RATE // 10:
            return []
        probs = self.probs + ([self._prob(np.pad(self.pending, (0, WINDOW - len(self.pending))))]
                              if len(self.pending) else [])
        stamps = get_speech_timestamps_from_probs(probs, sampling_rate=SAMPLE_RATE,
                                                  min_silence_duration_ms=int(min_gap * 1000),
                                                  min_speech_duration_ms=int(min_speech * 1000),
                                                  return_seconds=False, audio_length_samples=self.n_samples)
        return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]

    def _prob(self, window: np.ndarray) -> float:
        return self.model(torch.from_numpy(np.ascontiguousarray(window)), SAMPLE_RATE).item()


def speech_regions(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, min_gap: float = 0.3,
                   min_speech: float = 0.25) -> list[tuple[float, float]]:
    """[(start, end)] seconds of speech in a whole 16 kHz track (see SpeechDetector)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"speech detection takes {SAMPLE_RATE} Hz audio, got {sample_rate}")
    detector = SpeechDetector()
    detector.feed(samples)
    return detector.regions(min_gap, min_speech)


def speech_fraction(regions: list[tuple[float, float]], start: float, end: float) -> float:
    """Share of [start, end) covered by speech regions."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in regions)
    return min(1.0, covered / (end - start))
