"""The decoder on real files: rotation, variable frame rate, damage and truncation."""

from __future__ import annotations

import numpy as np
import pytest

from socialfeat.media import FrameStream, MediaError, load_audio, probe

from io_helpers import ffmpeg_frame, ffprobe_frame_times


def test_probe_facts(corpus):
    info = probe(corpus["talk"])
    assert (info.width, info.height, info.fps, info.rotation) == (320, 240, 25.0, 0)
    assert info.has_audio and info.audio_sample_rate == 16000 and info.duration == pytest.approx(10.0, abs=0.1)


def test_rotation_is_applied_like_ffmpeg(corpus):
    info = probe(corpus["rotated"])
    assert info.rotation == 90 and (info.width, info.height) == (240, 320)
    (_, frame), = FrameStream(info).at_times([2.0])
    assert frame.rgb.shape == (320, 240, 3)
    ref = ffmpeg_frame(corpus["rotated"], 50, 240, 320)
    assert np.abs(frame.rgb.astype(int) - ref).mean() < 2.0


def test_vfr_frames_are_picked_by_timestamp(corpus):
    info = probe(corpus["vfr"])
    pts = ffprobe_frame_times(corpus["vfr"]) - info.video_start
    times = np.arange(0.0, 9.5, 0.37)
    got = list(FrameStream(info).at_times(times))
    for t, frame in got:
        expected = pts[pts <= t + 1e-6].max()
        assert frame.time == pytest.approx(expected, abs=1e-6), t
    # and the pixels are that frame's (compare one against ffmpeg's own decode)
    t, frame = got[10]
    idx = int(np.argmin(np.abs(pts - frame.time)))
    assert np.abs(frame.rgb.astype(int) - ffmpeg_frame(corpus["vfr"], idx, 320, 240)).mean() < 2.0


def test_frames_past_the_end_are_none(corpus):
    stream = FrameStream(probe(corpus["short"]))
    got = dict(stream.at_times([0.0, 2.99, 3.5]))
    assert got[0.0] is not None and got[2.99] is not None and got[3.5] is None
    assert stream.last_time == pytest.approx(2.96, abs=1e-6)


@pytest.mark.parametrize("name,stage,needle", [("empty", "open", "empty file"),
                                               ("text", "open", "not a readable media file"),
                                               ("nomoov", "open", "not a readable media file"),
                                               ("audio_only", "probe", "no video stream")])
def test_unusable_files_raise_one_line_errors(corpus, name, stage, needle):
    with pytest.raises(MediaError) as e:
        probe(corpus[name])
    assert e.value.stage == stage and needle in str(e.value)
    assert str(corpus[name]) in str(e.value) and "\n" not in str(e.value)


def test_truncated_file_is_detected(corpus):
    info = probe(corpus["truncated"])
    stream = FrameStream(info)
    for _ in stream.at_times([0.0]):
        pass
    assert stream.last_time < info.duration - 2  # decodable extent far shorter than the container says


def test_damaged_audio_keeps_its_timeline(corpus):
    good = load_audio(probe(corpus["talk"]))
    bad = load_audio(probe(corpus["corrupt"]))
    assert bad.decode_errors > 0 and bad.gaps
    assert len(bad.samples) == pytest.approx(len(good.samples), abs=1600)
    a, b = bad.gaps[0]
    # after the gap the damaged file's audio lines up with the intact file's again
    np.testing.assert_allclose(bad.samples[b + 4000:b + 8000], good.samples[b + 4000:b + 8000], atol=1e-4)
    assert bad.valid_fraction(a, b) == 0.0 and good.valid_fraction(0, 16000) == 1.0
