"""Voice activity over a recording of hours without holding its track: the detector fed piece by piece
finds what Silero's own function finds over the whole track held at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_factory import speech_at_known_times

from socialfeat.media import AudioStream, probe
from socialfeat.pipeline import PlanSettings, VideoRun
from socialfeat.preprocess import SOCIAL_MAE_SPEC
from socialfeat.vad import SpeechDetector, load_vad
from socialfeat.walk import VideoRef


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory):
    return speech_at_known_times(tmp_path_factory.mktemp("vad"))


def _whole_track(video) -> np.ndarray:
    audio = AudioStream(probe(video), 16000)
    audio.ensure()
    return audio.window(0, audio.cursor)


@pytest.mark.parametrize("piece", [512, 1000, 16000 * 3 + 7])
def test_the_detector_fed_in_pieces_finds_what_silero_finds_over_the_whole_track(two_utterances, piece):
    from silero_vad import get_speech_timestamps

    video, truth = two_utterances
    samples = _whole_track(video)[:-100]  # (a last window to pad)
    assert len(samples) % 512
    expected = [(s["start"] / 16000, s["end"] / 16000) for s in get_speech_timestamps(
        torch.from_numpy(samples), load_vad(), sampling_rate=16000, min_silence_duration_ms=300,
        min_speech_duration_ms=250)]
    detector = SpeechDetector()
    for at in range(0, len(samples), piece):
        detector.feed(samples[at:at + piece])
    assert len(detector.probs) == len(samples) // 512  # (one probability per whole window, not the samples)
    assert detector.regions(0.3, 0.25) == expected
    assert len(expected) == 2 and all(abs(a - t0) < 0.5 for (a, _), (t0, _) in zip(expected, truth))


def test_extract_detects_speech_in_a_pass_that_releases_the_track_as_it_goes(two_utterances, monkeypatch):
    """The planning pass keeps at most a few 30-s chunks of audio, whatever the recording's length."""
    video, _ = two_utterances
    held = []
    feed = SpeechDetector.feed

    def watching_feed(self, samples):
        held.append(len(samples))
        return feed(self, samples)

    monkeypatch.setattr(SpeechDetector, "feed", watching_feed)
    monkeypatch.setattr("socialfeat.pipeline.SPAN_SECONDS", 4.0)
    plan = PlanSettings(clip_seconds=4.0, hop_seconds=None, missing_audio="nan", speech=True)
    run = VideoRun(0, VideoRef(video, video.name), SOCIAL_MAE_SPEC, plan)
    info = probe(video)
    run.open_audio(info)
    regions = run.detect_speech(run.audio)
    assert len(regions) == 2 and len(held) >= 3 and max(held) <= 4 * 16000 + 2048
    assert run.audio.cursor == 0  # (the clips' own audio is not decoded by the detection)
