"""Recordings whose tracks do not line up, or that carry unusual audio: the verdict and the QC
facts of each, from real files through the real decoder (one video's pipeline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from media_factory import talking_video

from socialfeat.media import load_audio, probe
from socialfeat.models import create_model
from socialfeat.pipeline import ClipItem, PlanSettings, VideoDone, video_items
from socialfeat.walk import VideoRef


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """12 s of a talking face at 25 fps with speech (AAC)."""
    return talking_video(tmp_path_factory.mktemp("odd_tracks") / "talk.mp4", seconds=12.0, size="160x120")


def verdict(path: Path) -> dict:
    """The videos-table row that one video's pipeline gives."""
    spec = create_model("social-mae-tiny").info.preprocess
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan")
    done = [x for x in video_items(0, VideoRef(path, path.name), spec, plan, None) if isinstance(x, VideoDone)]
    return done[0].video


def test_audio_that_runs_on_after_the_picture_is_not_truncation(source, tmp_path):
    longer = tmp_path / "audio_longer.mp4"  # a camera that stops before the microphone
    ffmpeg("-i", str(source), "-f", "lavfi", "-i", "sine=d=20:r=16000", "-map", "0:v", "-map", "1:a",
           "-c:v", "copy", "-c:a", "aac", str(longer))
    row = verdict(longer)
    assert row["duration_s"] == pytest.approx(20.0, abs=0.1)  # the container's: the longest track
    assert row["status"] == "ok" and row["decoded_duration_s"] == pytest.approx(12.0, abs=0.05)
    assert row["audio_gap_s"] == 0.0


def test_audio_gap_is_how_much_earlier_than_the_picture_the_audio_ends(source, tmp_path):
    late_picture = tmp_path / "video_late.mp4"  # the picture starts 3 s after the sound, so it ends 3 s later
    ffmpeg("-itsoffset", "3", "-i", str(source), "-i", str(source), "-map", "0:v", "-map", "1:a", "-c", "copy",
           str(late_picture))
    row = verdict(late_picture)
    assert row["status"] == "ok" and row["audio_gap_s"] == pytest.approx(3.0, abs=0.1)
    late_sound = tmp_path / "audio_late.mp4"  # the sound starts 4 s late and runs to the end: no gap at the end
    ffmpeg("-i", str(source), "-itsoffset", "4", "-ss", "4", "-i", str(source), "-map", "0:v", "-map", "1:a",
           "-c:v", "copy", "-c:a", "aac", str(late_sound))
    row = verdict(late_sound)
    assert row["status"] == "ok" and row["audio_gap_s"] == 0.0 and row["audio_duration_s"] < 8.5


@pytest.mark.parametrize("container", ["mkv", "webm"])
def test_a_matroska_picture_that_starts_after_the_sound_is_not_truncation(source, tmp_path, container):
    # ffmpeg's Matroska muxer tags each track with the time its last frame ends (DURATION), not with
    # how long the track lasts: the picture starting 3 s late is tagged 15 s, but it holds 12 s
    late_picture = tmp_path / f"video_late.{container}"
    codecs = ["-c", "copy"] if container == "mkv" else ["-c:v", "libvpx", "-deadline", "realtime",
                                                        "-cpu-used", "8", "-c:a", "libopus"]
    ffmpeg("-itsoffset", "3", "-i", str(source), "-i", str(source), "-map", "0:v", "-map", "1:a", *codecs,
           str(late_picture))
    row = verdict(late_picture)
    assert row["status"] == "ok" and row["error"] == "" and row["n_clips"] == 6
    assert row["decoded_duration_s"] == pytest.approx(12.0, abs=0.05)
    assert row["audio_gap_s"] == pytest.approx(3.0, abs=0.1)
    cut = tmp_path / f"cut.{container}"  # half of it: still truncated, against the picture's 12 s
    cut.write_bytes(late_picture.read_bytes()[: late_picture.stat().st_size // 2])
    row = verdict(cut)
    assert row["status"] == "truncated" and "of 12.0" in row["error"]


def test_a_truncated_file_is_still_truncated(source, tmp_path):
    cut = tmp_path / "cut.mp4"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    row = verdict(cut)
    assert row["status"] == "truncated" and row["decoded_duration_s"] < 9.0


def without_audio_packets(src: Path, out: Path, t0: float, t1: float) -> Path:
    """``src`` remuxed to ``out`` without its audio packets in [t0, t1): packets lost on the way,
    as a damaged Matroska or MPEG-TS file gives them (those demuxers skip damage silently)."""
    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*(inp.streams[i] for i in streams)):
            if packet.dts is None:
                continue
            if packet.stream.type == "audio" and t0 <= float(packet.pts * packet.time_base) < t1:
                continue
            packet.stream = streams[packet.stream.index]
            dst.mux(packet)
    return out


def test_audio_lost_inside_its_track_makes_the_video_damaged(source, tmp_path):
    intact = without_audio_packets(source, tmp_path / "intact.mkv", 0.0, 0.0)
    lost = without_audio_packets(source, tmp_path / "lost.mkv", 4.0, 6.0)
    assert verdict(intact)["status"] == "ok"
    row = verdict(lost)
    assert row["status"] == "damaged" and row["decode_errors"] == 0
    missing = float(row["error"].split("decode-audio: ")[1].split(" s of audio missing inside the track")[0])
    assert missing == pytest.approx(2.0, abs=0.1)
    assert row["audio_duration_s"] == pytest.approx(10.0, abs=0.1) and row["audio_gap_s"] == 0.0


def test_the_decoded_extent_does_not_run_past_the_video_stream(source, tmp_path):
    slides = tmp_path / "slides.mp4"  # three pictures, at 0, 5 and 10 s: an average frame interval of 3.3 s
    ffmpeg("-i", str(source), "-vf", "select='eq(n,0)+eq(n,125)+eq(n,250)'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-c:a", "copy", str(slides))
    row = verdict(slides)
    assert row["decoded_duration_s"] <= row["duration_s"] + 0.05


def test_multichannel_pcm_in_a_custom_channel_order_is_decoded(source, tmp_path):
    """8 PCM channels in MOV have a layout in a custom order, which crashes PyAV 17-18 when its
    frames carry it (the process aborts). The first channel must come out, as ffmpeg gives it."""
    mov = tmp_path / "pcm71.mov"
    ffmpeg("-i", str(source), "-t", "6", "-c:v", "copy", "-af", "pan=7.1|c0=c0|c2=0.5*c0",
           "-c:a", "pcm_s16le", str(mov))
    script = ("import sys, numpy as np\n"
              "from socialfeat.media import probe, load_audio\n"
              "info = probe(sys.argv[1])\n"
              "np.save(sys.argv[2], load_audio(info).samples)\n"
              "print(info.audio_channels)\n")
    run = subprocess.run([sys.executable, "-c", script, str(mov), str(tmp_path / "a.npy")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert run.stdout.split() == ["8"]
    ours = np.load(tmp_path / "a.npy")
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(mov), "-af", "pan=mono|c0=c0", "-ar", "16000",
                          "-f", "f32le", "-"], capture_output=True, check=True).stdout
    theirs = np.frombuffer(raw, np.float32)
    assert np.abs(theirs).max() > 0.05 and abs(len(ours) - len(theirs)) <= 16
    n = min(len(ours), len(theirs))
    np.testing.assert_allclose(ours[:n], theirs[:n], atol=1e-6)


def test_a_dv_camcorder_file_has_its_frame_rate(source, tmp_path):
    # the DV demuxer of PyAV's FFmpeg (8.1) states an average rate of 60000 fps for NTSC DV: the last
    # frame was shown for 1/60000 s, so the video was a frame short
    dv = tmp_path / "tape.dv"
    ffmpeg("-i", str(source), "-t", "6", "-vf", "scale=720:480", "-r", "30000/1001", "-c:v", "dvvideo",
           "-pix_fmt", "yuv411p", "-c:a", "pcm_s16le", "-ar", "48000", "-ac", "2", str(dv))
    row = verdict(dv)
    assert row["status"] == "ok" and row["fps"] == pytest.approx(29.97, abs=0.01)
    assert row["decoded_duration_s"] == pytest.approx(row["duration_s"], abs=0.005)


def test_theora_packets_that_repeat_a_frame_are_not_damage(source, tmp_path):
    # libtheora writes an empty packet where a frame repeats the one before; sent to the decoder, each
    # failed and was counted as a damaged packet (the video damaged)
    ogv = tmp_path / "web.ogv"
    ffmpeg("-i", str(source), "-an", "-c:v", "libtheora", "-q:v", "4", str(ogv))
    with av.open(str(ogv)) as c:
        assert any(p.size == 0 and p.pts is not None for p in c.demux(video=0))
    row = verdict(ogv)
    assert row["status"] == "ok" and row["decode_errors"] == 0, row["error"]
    assert row["decoded_duration_s"] == pytest.approx(12.0, abs=0.05) and row["n_clips"] == 6


def test_ogg_vorbis_timestamps_that_jump_and_come_back_lose_no_audio(source, tmp_path):
    # the Ogg demuxer times a Vorbis packet after a long block up to 448 samples late, and the next one
    # right again: read as audio lost, it made gaps of silence, cut as much real sound, and the video damaged
    ogv = tmp_path / "web.ogv"
    ffmpeg("-i", str(source), "-c:v", "libtheora", "-q:v", "4", "-c:a", "libvorbis", "-ar", "48000", str(ogv))
    row = verdict(ogv)
    assert row["status"] == "ok", row["error"]
    track = load_audio(probe(ogv))
    assert [g for g in track.gaps if g[0] > 0] == []
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(ogv), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    theirs, ours = np.frombuffer(raw, np.float32), track.samples
    window = slice(2 * 16000, 11 * 16000)
    lag = min(range(-400, 401), key=lambda k: np.abs(ours[window] - np.roll(theirs, k)[window]).mean())
    assert np.abs(ours[window] - np.roll(theirs, lag)[window]).max() < 1e-3


def test_windows_media_sound_is_decoded(source, tmp_path):
    # WMA states a channel count but no channel order, as the custom layouts of multichannel PCM do not
    # name theirs: decoded by a context of our own, which WMA cannot open without the stream's block
    # size, every packet failed (no audio, the video called damaged)
    wmv = tmp_path / "old lab.wmv"
    ffmpeg("-i", str(source), "-c:v", "wmv2", "-c:a", "wmav2", "-ac", "1", "-ar", "44100", str(wmv))
    row = verdict(wmv)
    assert row["status"] == "ok" and row["decode_errors"] == 0, row["error"]
    assert row["audio_duration_s"] == pytest.approx(12.0, abs=0.1)
    ours = load_audio(probe(wmv)).samples
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(wmv), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    theirs = np.frombuffer(raw, np.float32)
    assert np.abs(theirs).max() > 0.05
    # ffmpeg's command line starts with the first decoded sample; ours are placed by their timestamps
    # (the decoder's first frame comes two packets in): the same samples, a few ms apart
    window = slice(3 * 16000, 5 * 16000)
    lag = min(range(-1600, 1601), key=lambda k: np.abs(ours[window] - np.roll(theirs, k)[window]).mean())
    assert np.abs(ours[window] - np.roll(theirs, lag)[window]).max() < 1e-3


@pytest.mark.parametrize("codec,first,then", [("ac3", ("-ac", "2"), ("-ac", "1")),
                                               ("mp2", ("-ar", "48000"), ("-ar", "44100"))], ids=["layout", "rate"])
def test_sound_whose_layout_or_rate_changes_midway_is_decoded(source, tmp_path, codec, first, then):
    # one MPEG-TS recording whose sound changes at 6 s, as broadcast recordings do (stereo to mono AC-3,
    # MP2 at another rate); PyAV's resampler refuses such frames, and the video was an internal error
    parts = [tmp_path / "first.ts", tmp_path / "second.ts"]
    ffmpeg("-i", str(source), "-t", "6", "-c:v", "copy", "-c:a", codec, *first, str(parts[0]))
    ffmpeg("-ss", "6", "-i", str(source), "-c:v", "copy", "-c:a", codec, *then, "-output_ts_offset", "6",
           str(parts[1]))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(parts[0].read_bytes() + parts[1].read_bytes())  # timestamps go on
    row = verdict(joined)
    assert row["status"] == "ok" and row["n_clips"] == 6, row["error"]
    assert row["audio_duration_s"] == pytest.approx(12.0, abs=0.1)
    ours = load_audio(probe(joined)).samples
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-ac", "1", "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    theirs = np.frombuffer(raw, np.float32)
    # after the change, the source's speech (the second part's timestamps, as ffmpeg muxed them, are
    # up to 0.1 s off the source's: compared at the best lag)
    window = slice(7 * 16000, 11 * 16000)
    best = max(np.corrcoef(ours[window], np.roll(theirs, lag)[window])[0, 1] for lag in range(-3200, 3201, 16))
    assert best > 0.9


def test_mpegts_files_joined_end_to_end_are_reported(source, tmp_path):
    """Two MPEG-TS recordings concatenated byte for byte (as some recorders split files): the
    second's timestamps start again at 0. Its frames cannot go on the first's timeline: the video
    is damaged, saying where the jump is, and keeps the first recording's clips."""
    first, second = tmp_path / "p1.ts", tmp_path / "p2.ts"
    ffmpeg("-i", str(source), "-t", "6", "-c", "copy", "-f", "mpegts", str(first))
    ffmpeg("-ss", "6", "-i", str(source), "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts", str(second))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    alone, row = verdict(first), verdict(joined)
    assert alone["status"] == "ok"
    assert row["status"] == "damaged" and "timestamps jump back from" in row["error"]
    assert row["n_clips"] == alone["n_clips"] and row["decoded_duration_s"] == pytest.approx(alone["decoded_duration_s"])


def test_the_default_audio_track_and_the_largest_picture_are_used(source, tmp_path):
    """A second audio track marked default (a lavalier microphone beside the camera's), and a small
    preview stream before the full picture: socialfeat takes what a player would, and says which."""
    tone = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=12", str(tone))
    tracks = tmp_path / "tracks.mkv"
    ffmpeg("-i", str(source), "-i", str(tone), "-filter_complex", "[0:v]scale=80:60[small]",
           "-map", "[small]", "-map", "0:v", "-map", "0:a", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac",
           "-disposition:a:0", "0", "-disposition:a:1", "default", str(tracks))
    info = probe(tracks)
    assert (info.video_stream, info.audio_stream) == (1, 3) and (info.width, info.height) == (160, 120)
    row = verdict(tracks)
    assert (row["video_stream"], row["audio_stream"], row["status"]) == (1, 3, "ok")
    ours = load_audio(info).samples[16000:32000]  # the tone, not the speech
    spectrum = np.abs(np.fft.rfft(ours))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2


def clip_rows(path: Path) -> list[dict]:
    spec = create_model("social-mae-tiny").info.preprocess
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan")
    return [x.clip for x in video_items(0, VideoRef(path, path.name), spec, plan, None) if isinstance(x, ClipItem)]


def test_frame_gaps_are_holes_in_the_picture_not_a_slow_frame_rate(source, tmp_path):
    one_fps = tmp_path / "one_fps.mp4"  # a screen recording at one frame a second: its normal
    ffmpeg("-i", str(source), "-vf", "fps=1", "-c:v", "libx264", "-c:a", "copy", str(one_fps))
    rows = clip_rows(one_fps)
    assert rows and not any("frame_gap" in r["qc_flags"] for r in rows)
    assert all(r["n_frames"] <= 2 and "frames_repeated" in r["qc_flags"] for r in rows)  # 2-s clips, 1 fps
    hole = tmp_path / "hole.mp4"  # 25 fps with the frames of 4-7 s missing (timestamps kept)
    ffmpeg("-i", str(source), "-vf", "select='not(between(t,4,7))'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-c:a", "copy", str(hole))
    flagged = [r["start_s"] for r in clip_rows(hole) if "frame_gap" in r["qc_flags"]]
    assert flagged and all(4.0 <= s < 7.0 for s in flagged)


def notes_of(path: Path) -> list[tuple[str, str]]:
    spec = create_model("social-mae-tiny").info.preprocess
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan")
    done = [x for x in video_items(0, VideoRef(path, path.name), spec, plan, None) if isinstance(x, VideoDone)]
    return [(e["stage"], e["message"]) for e in done[0].errors]


@pytest.mark.parametrize("pan,channel", [("stereo|c0=0*c0|c1=c0", 2), ("stereo|c0=c0|c1=c0", None),
                                         ("stereo|c0=c0|c1=0*c0", None), ("mono|c0=c0", None),
                                         ("3c|c0=0*c0|c1=0.001*c0|c2=c0", 3)])
def test_sound_on_another_channel_than_the_first_is_noted(source, tmp_path, pan, channel):
    """One lavalier microphone per stereo channel: the models hear the first channel only (the reference's
    choice), so a recording whose sound is elsewhere gets a note naming the channel; the verdict stays ok."""
    out = tmp_path / "panned.mkv"
    ffmpeg("-i", str(source), "-c:v", "copy", "-af", f"pan={pan}", "-c:a", "pcm_s16le", str(out))
    rows = [message for stage, message in notes_of(out) if stage == "audio-channels"]
    assert verdict(out)["status"] == "ok"
    if channel is None:
        assert not rows
    else:
        assert len(rows) == 1 and f"channel {channel} carries sound" in rows[0] and f"c0=c{channel - 1}" in rows[0]
