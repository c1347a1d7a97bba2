"""Skipping non-reference frames (media.NonrefSkipper) hands out exactly the frames, pixel for
pixel, and reports exactly the facts (decode errors, decoded extent) of decoding every frame,
on real files of the kinds that matter: B-frames with and without a pyramid, no B-frames, open
GOPs, variable frame rate, HEVC, damaged packets; requests from overlapping clip windows."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from media_factory import run, talking_video

from socialfeat import media
from socialfeat.media import FrameStream, probe
from socialfeat.pipeline import ClipItem, PlanSettings, video_items
from socialfeat.preprocess import SOCIAL_MAE_SPEC
from socialfeat.walk import VideoRef

X264 = ("-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "50")
ENCODINGS = {
    "bframes": X264,  # x264's default: 3 B-frames, B-pyramid
    "pyramid5": X264 + ("-bf", "5", "-x264-params", "b-pyramid=normal:b-adapt=2"),
    "no_pyramid": X264 + ("-x264-params", "b-pyramid=none"),
    "ippp": X264 + ("-bf", "0"),  # as most phones record: nothing to skip
    "open_gop": ("-c:v", "libx264", "-preset", "veryfast", "-g", "20", "-x264-params", "open-gop=1"),
    "hevc": ("-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=none:bframes=3", "-g", "50"),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("skip")
    files = {name: talking_video(root / f"{name}.mp4", seconds=6.0, fps=25, vcodec=codec)
             for name, codec in ENCODINGS.items()}
    files["vfr"] = root / "vfr.mp4"  # 6 of every 10 frames kept with their timestamps
    run("ffmpeg", "-v", "error", "-y", "-i", str(files["bframes"]), "-vf", "select='lt(mod(n,10),6)'",
        "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "veryfast", "-an", str(files["vfr"]))
    files.update(damaged(files["bframes"], root))
    data = talking_video(root / "talk.mp4").read_bytes()  # the test corpus's talk.mp4 and corrupt_mid.mp4
    files["corrupt_mid"] = root / "corrupt_mid.mp4"  # a run of 0xff mid-file: damage after skipped frames
    files["corrupt_mid"].write_bytes(data[:30000] + b"\xff" * 8000 + data[38000:])
    files["truncated"] = root / "truncated.mp4"
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


def slice_nal(data: bytes) -> tuple[int, int]:
    """(offset in the packet, nal_ref_idc) of a packet's first slice NAL (4-byte length prefixes)."""
    at = 0
    while at + 5 <= len(data):
        size, header = int.from_bytes(data[at:at + 4], "big"), data[at + 4]
        if header & 31 in (1, 5):
            return at, (header >> 5) & 3
        at += 4 + size
    raise ValueError("no slice NAL")


class RecordingSkipper(media.NonrefSkipper):
    sent: list = []

    def before(self, packet, wanted: float) -> None:
        super().before(packet, wanted)
        self.sent.append((packet.pts, self.skipping))


def skipped_pts(path) -> set:
    """pts of the packets sent while skipping, decoding ``path`` with the tests' requests."""
    saved, media.NonrefSkipper = media.NonrefSkipper, RecordingSkipper
    RecordingSkipper.sent = []
    try:
        decode(path, skip=True)
    finally:
        media.NonrefSkipper = saved
    return {pts for pts, skipping in RecordingSkipper.sent if skipping}


def damaged(path, root) -> dict:
    """Copies with bytes overwritten in the slice data of every 5th non-reference packet (or in
    its slice header), of two reference packets, or of both; and in the slice header of one
    non-reference packet alone. name -> path, name + '_pts' -> the damaged packets' pts."""
    with av.open(str(path)) as c:
        packets = [(p.pos, p.size, p.pts, *slice_nal(bytes(p))) for p in c.demux(c.streams.video[0]) if p.size > 40]
    nonref = [p for p in packets if p[4] == 0][::5]
    skipped = [p for p in nonref if p[2] in skipped_pts(path)]
    ref = [p for p in packets if p[4] and p[0] != packets[0][0]][2:4]
    data = path.read_bytes()
    out = {}
    for name, hits in {"damaged_nonref": nonref, "damaged_header": nonref, "damaged_ref": ref,
                       "damaged_both": nonref + ref, "damaged_one_header": skipped[1:2]}.items():
        buf = bytearray(data)
        for pos, size, _, at, _ in hits:
            start = pos + at + (5 if "header" in name else 12)  # the slice header, or its data
            n = (size - at - 12) // 2
            buf[start:start + n] = b"\xa5" * n
        out[name] = root / f"{name}.mp4"
        out[name].write_bytes(bytes(buf))
        out[name + "_pts"] = {p[2] for p in hits}
    return out


def request_times(duration: float, dense: bool = True) -> list[float]:
    """The frames of 4-s clips one after the other (as a worker asks for them by default); with
    ``dense``, of 4-s clips every second (overlapping windows) and times at, just before and just
    after frame boundaries, in order."""
    spec = SOCIAL_MAE_SPEC
    clips = [spec.frame_times(s, 4.0) for s in np.arange(0.0, duration, 1.0 if dense else 4.0)]
    edges = np.arange(0.0, duration, 0.52)
    extra = [edges, edges - 1e-7, edges + 0.04 - 1e-9, [duration + 0.2]] if dense else []
    return sorted(np.concatenate(clips + extra).tolist())


def taken(stream: FrameStream, times: list[float]) -> list:
    """(time, (frame time, pixels) or None) for each requested time."""
    return [(t, None if f is None else (f.time, f.rgb.copy())) for t, f in stream.at_times(times)]


def decode(path, skip: bool, threads: int = 1, dense: bool = True) -> tuple[list, FrameStream]:
    info = probe(path)
    media.skip_nonref, saved = skip, media.skip_nonref
    try:
        stream = FrameStream(info, threads=threads)
        got = taken(stream, request_times(info.duration, dense))
    finally:
        media.skip_nonref = saved
    return got, stream


def assert_same_frames(full: list, fast: list) -> None:
    assert [t for t, _ in fast] == [t for t, _ in full]
    for (t, a), (_, b) in zip(full, fast):
        assert (a is None) == (b is None), t
        if a is not None:
            assert a[0] == b[0] and np.array_equal(a[1], b[1]), t


def assert_same(path, threads: int = 1, dense: bool = True) -> FrameStream:
    full, plain = decode(path, skip=False, threads=threads, dense=dense)
    fast, skipping = decode(path, skip=True, threads=threads, dense=dense)
    assert_same_frames(full, fast)
    assert (skipping.decode_errors, skipping.last_time, skipping.io_error) == \
           (plain.decode_errors, plain.last_time, plain.io_error)
    return skipping


@pytest.mark.parametrize("name", ["bframes", "pyramid5", "no_pyramid", "open_gop", "vfr"])
def test_skipping_hands_out_the_same_frames(videos, name):
    stream = assert_same(videos[name])
    assert stream.skipper is not None and stream.skipper.packets_skippable > 0  # something was skipped


def test_without_b_frames_nothing_is_skipped(videos):
    stream = assert_same(videos["ippp"])
    assert stream.skipper.packets_skippable == 0


@pytest.mark.parametrize("name", ["damaged_header", "corrupt_mid", "truncated"])
@pytest.mark.parametrize("dense", [False, True])
def test_reported_damage_gives_the_same_frames_and_facts(videos, name, dense):
    """Damage the decoder reports: after the first error, decoding starts over without skipping
    (without that, corrupt_mid's concealed frames differ)."""
    stream = assert_same(videos[name], dense=dense)
    assert stream.decode_errors > 0 or (name == "truncated" and stream.last_time < 6.0)


@pytest.mark.parametrize("name", ["damaged_nonref", "damaged_ref", "damaged_both"])
@pytest.mark.parametrize("dense", [False, True])
def test_silent_damage_changes_only_concealed_pictures(videos, name, dense, monkeypatch):
    """Damaged picture data that the decoder conceals without an error: the facts are the same,
    and so is every frame except concealed ones (which differ from the intact file's): how
    libavcodec conceals them depends on the pictures decoded before, skipped ones included."""
    monkeypatch.setattr(media, "NonrefSkipper", RecordingSkipper)
    RecordingSkipper.sent = []
    full, plain = decode(videos[name], skip=False, dense=dense)
    fast, skipping = decode(videos[name], skip=True, dense=dense)
    intact, _ = decode(videos["bframes"], skip=False, dense=dense)
    assert (skipping.decode_errors, skipping.last_time, skipping.io_error) == (0, plain.last_time, False)
    assert [(t, a is None) for t, a in fast] == [(t, a is None) for t, a in full]
    for (t, a), (_, b), (_, c) in zip(full, fast, intact):
        if a is not None and not (a[0] == b[0] and np.array_equal(a[1], b[1])):
            assert a[0] == b[0] == c[0] and not np.array_equal(a[1], c[1]), t
    if name != "damaged_ref":  # some damaged packets went while skipping
        assert {pts for pts, skipping in RecordingSkipper.sent if skipping} & videos[name + "_pts"]


def test_a_damaged_header_inside_a_skipped_frame_goes_unreported(videos, monkeypatch):
    """The known limit: libavcodec reports success for a packet it skips, even when its slice
    header is damaged. The frames are still the same; only that packet's error is not counted."""
    monkeypatch.setattr(media, "NonrefSkipper", RecordingSkipper)
    RecordingSkipper.sent = []
    full, plain = decode(videos["damaged_one_header"], skip=False)
    fast, skipping = decode(videos["damaged_one_header"], skip=True)
    assert videos["damaged_one_header_pts"] <= {pts for pts, skipping in RecordingSkipper.sent if skipping}
    assert_same_frames(full, fast)
    assert (plain.decode_errors, skipping.decode_errors) == (1, 0)
    assert skipping.last_time == plain.last_time


def test_other_decoders_and_frame_threads_decode_everything(videos):
    """HEVC's skipping is not used (untested here), nor skipping with frame threads (a
    decoder error surfaces packets later, so a frame counted on could still be lost)."""
    assert_same(videos["hevc"])
    _, stream = decode(videos["hevc"], skip=True)
    assert stream.skipper is None
    _, stream = decode(videos["bframes"], skip=True, threads=2)
    assert stream.skipper is None



def worker_output(path, skip: bool) -> list:
    plan = PlanSettings(clip_seconds=4.0, hop_seconds=1.0, missing_audio="nan", raw_frames=True)
    media.skip_nonref, saved = skip, media.skip_nonref
    try:
        return list(video_items(0, VideoRef(path, path.name), SOCIAL_MAE_SPEC, plan, None))
    finally:
        media.skip_nonref = saved


def test_a_worker_hands_over_the_same_clips(videos, monkeypatch):
    """Overlapping clips (4 s every second) from a worker as on a GPU server: one decoder
    thread, decoded frames handed over; frames, fbanks and the video's row are the same."""
    monkeypatch.setattr(media, "_decoder_threads", 1)
    full, fast = worker_output(videos["bframes"], False), worker_output(videos["bframes"], True)
    clips = [(a, b) for a, b in zip(full, fast) if isinstance(a, ClipItem)]
    assert len(full) == len(fast) and len(clips) == 3
    for a, b in clips:
        assert a.clip == b.clip and torch.equal(a.video, b.video) and torch.equal(a.audio, b.audio)
    assert full[-1] == fast[-1]  # VideoDone: the video's row (decoded extent, errors) and error rows


@pytest.mark.parametrize("name", ["bframes", "open_gop"])
def test_a_seeking_reader_gets_the_same_frames(videos, name):
    """read_clip's way in (pretraining): seek to a window, take its frames."""
    info = probe(videos[name])
    for start in (1.3, 3.0):
        times = SOCIAL_MAE_SPEC.frame_times(start, 2.0).tolist()
        got = {}
        for skip in (False, True):
            media.skip_nonref, saved = skip, media.skip_nonref
            try:
                stream = FrameStream(info, threads=1, seek_to=start)
                got[skip] = taken(stream, times)
            finally:
                media.skip_nonref = saved
        assert_same_frames(got[False], got[True])
        assert stream.skipper.packets_skippable > 0
