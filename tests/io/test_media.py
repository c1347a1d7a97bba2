"""The decoder on real files: rotation, variable frame rate, damage and truncation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from io_helpers import ffmpeg_frame, ffprobe_frame_times

from socialfeat import media
from socialfeat.media import AudioStream, FrameStream, MediaError, load_audio, probe


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


def test_special_files_are_refused_as_such(tmp_path):
    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)  # opening it would block until a writer came
    device = tmp_path / "zeros.mp4"
    device.symlink_to("/dev/zero")  # reads never end
    for path in (fifo, device):
        with pytest.raises(MediaError) as e:
            probe(path)
        assert e.value.stage == "open" and "not a regular file" in str(e.value) and str(path) in str(e.value)


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


@pytest.mark.parametrize("name", ["talk", "corrupt"])
def test_streamed_audio_equals_the_whole_track_and_holds_one_window(corpus, name):
    """Extraction streams the track: the same samples, gaps and facts, never more than a window held."""
    info = probe(corpus[name])
    whole, stream = load_audio(info), AudioStream(info)
    window, held = 32000, []
    for i0 in range(0, len(whole.samples), window):
        np.testing.assert_array_equal(stream.window(i0, i0 + window), whole.window(i0, i0 + window))
        assert stream.valid_fraction(i0, i0 + window) == whole.valid_fraction(i0, i0 + window)
        held.append(sum(len(c) for _, c in stream.chunks))
        stream.release(i0 + window)
    stream.ensure()
    gaps = sum(b - a for a, b in whole.gaps)  # (a gap is filled at once when the audio after it arrives)
    assert max(held) < window + 2 * 1024 + gaps  # a window, plus the audio frame decoded past its end
    assert (stream.duration, stream.decode_errors, stream.n_samples) == \
        (whole.duration, whole.decode_errors, len(whole.samples))
    with pytest.raises(RuntimeError, match="released"):
        stream.window(0, window)


def test_windowed_audio_equals_whole_track(corpus):
    info = probe(corpus["talk"])
    whole = load_audio(info)
    part = load_audio(info, 16000, start=4.0, end=6.0)
    assert part.start_sample == 64000 and len(part.samples) == 32000
    a, b = part.window(64000, 96000), whole.window(64000, 96000)
    # FFmpeg's AAC decoder fills noise-substituted bands from a random generator whose state
    # depends on where decoding started, so a seek changes those bands slightly; the rest is equal.
    assert np.corrcoef(a, b)[0, 1] > 0.999
    assert np.mean(np.abs(a - b) < 1e-4) > 0.9


def test_seeking_clip_reader_equals_streaming_extraction(corpus):
    """Pretraining's read_clip (seek to the window) and extraction's streaming path agree."""
    from socialfeat.model_inputs import read_clip
    from socialfeat.pipeline import ClipItem, PlanSettings, video_items
    from socialfeat.preprocess import SOCIAL_MAE_SPEC
    from socialfeat.walk import VideoRef

    ref = VideoRef(corpus["talk"], "talk.mp4")
    items = [x for x in video_items(0, ref, SOCIAL_MAE_SPEC, PlanSettings(4.0, None, "nan"), None)
             if isinstance(x, ClipItem)]
    streamed = items[1]
    assert streamed.clip["start_s"] == 4.0
    direct = read_clip(probe(corpus["talk"]), SOCIAL_MAE_SPEC, 4.0, 4.0)
    assert torch.equal(direct.video, streamed.video)
    assert (direct.audio - streamed.audio).abs().mean() < 0.01  # AAC noise bands differ after a seek


@pytest.mark.parametrize("margins", [media.SEEK_MARGINS_S, (-1.5, 5.0, 60.0), (-1.5, -1.5, -1.5)])
def test_frames_from_a_seek_are_those_of_decoding_everything(corpus, monkeypatch, margins):
    """A part of a recording decodes from a seek: the frames handed out from there on are those of a
    decode from the start, also when the demuxer lands after the first frame wanted (forced here with
    negative margins: the stream seeks further back, at last decodes from the beginning)."""
    monkeypatch.setattr(media, "SEEK_MARGINS_S", margins)
    info = probe(corpus["talk"])  # keyframes every 2 s, B-frames
    times = np.arange(3.03, 9.0, 0.41)
    whole = [(t, f.time, f.rgb) for t, f in FrameStream(info, threads=1).at_times(times)]
    seeking = FrameStream(info, threads=1, seek_to=float(times[0]))
    part = [(t, f.time, f.rgb) for t, f in seeking.at_times(times)]
    assert [(t, ft) for t, ft, _ in part] == [(t, ft) for t, ft, _ in whole]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(part, whole))
    assert seeking.last_time == pytest.approx(whole_last(info))


def whole_last(info) -> float:
    stream = FrameStream(info, threads=1)
    for _ in stream.at_times([0.0]):
        pass
    return stream.last_time
