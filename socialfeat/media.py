"""Decoding: container facts, 16 kHz audio, and frames picked by presentation time.

PyAV (FFmpeg) is the decoder. Measured here (docs/performance.md,
benchmarks/decoder_bench.py) it decodes H.264 about 1.8x faster than decord
and, unlike decord, reports damaged data instead of silently returning a
shortened audio track. Damage is handled per packet: a packet that fails to
decode is skipped and counted, decoding goes on, and the decoded extent is
compared with the container's so that truncation is detected and reported.

Time zero is the first video frame's presentation time; audio is placed on the
same clock, so a clip's frames and samples come from the same window even when
the streams start at different offsets or the frame rate varies.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import stat
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Decoded extent shorter than the container's by more than this is "truncated".
TRUNCATION_TOLERANCE_S = 0.5
# Video timestamps that go back by more than this (s) start another timeline (MPEG-TS files joined
# end to end): the frames after the jump are not used, and the video is reported damaged.
TIME_JUMP_S = 1.0
# Audio frames whose timestamps are off by less than this (samples) are treated as contiguous.
AUDIO_JITTER_SAMPLES = 32
# Decoders whose frame skipping (AVCodecContext.skip_frame) FrameStream uses; see NonrefSkipper.
SKIP_NONREF_CODECS = ("h264",)
skip_nonref = True  # module switch: benchmarks and tests turn it off to compare with decoding everything


# FrameStream seeks this much before the first frame it needs (see _open_video), then further back
# if the demuxer lands after that frame, then decodes from the beginning
SEEK_MARGINS_S = (0.5, 5.0, 60.0)


class _LandedLate(Exception):
    """A seek landed after the first frame wanted (FrameStream._frames starts over)."""


class MediaError(Exception):
    """A file that cannot be used; ``stage`` says where it failed (open, probe, audio, video).
    ``in_file``: the cause is in the file's own bytes (not a media file, no video stream), so
    reading it again unchanged fails again; False for I/O errors (a network share, permissions)."""

    def __init__(self, path: str | Path, stage: str, cause: str, in_file: bool = True):
        self.path, self.stage, self.cause = str(path), stage, " ".join(str(cause).split())
        self.in_file = in_file
        super().__init__(f"{self.path}: {stage}: {self.cause}")


@dataclass
class MediaInfo:
    """What the container says about a file (before full decoding)."""

    path: str
    size_bytes: int
    mtime: float
    duration: float  # seconds, container (or longest stream) duration
    video_duration: float  # seconds, the video stream's own (the container's when it states none)
    has_video: bool
    has_audio: bool
    fps: float  # average frame rate
    width: int  # display width, after rotation
    height: int
    rotation: int  # degrees counter-clockwise applied to decoded frames
    video_start: float  # first video pts (s): time zero of every clip
    video_stream: int  # the container's index of the video stream used (see main_stream)
    audio_stream: int  # ... of the audio stream used (-1: none)
    audio_start: float
    audio_sample_rate: int
    audio_channels: int

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: Path):
    """The container; a file that cannot be read (permissions, a share gone) is not called a bad
    media file: the cure is elsewhere, and a rerun tries it again."""
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        cause = f"{e.__class__.__name__}: {getattr(e, 'strerror', None) or e}"
        if isinstance(e, OSError):
            raise MediaError(path, "open", f"cannot be read ({cause})", in_file=False) from None
        raise MediaError(path, "open", f"not a readable media file ({cause})") from None


def probe(path: str | Path) -> MediaInfo:
    """Container facts; raises MediaError for empty, unreadable or video-less files."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise MediaError(path, "open", e.strerror or str(e), in_file=False) from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the open; a device never ends
        raise MediaError(path, "open", "not a regular file (a pipe, device or socket)")
    if st.st_size == 0:
        raise MediaError(path, "open", "empty file (0 bytes)")
    with _open(path) as c:
        vs, a = main_stream(c.streams.video, "video"), main_stream(c.streams.audio, "audio")
        if vs is None:
            what = "audio-only file" if a is not None else "no audio or video stream"
            raise MediaError(path, "probe", f"no video stream ({what})")
        rotation = 0
        first_time = None
        try:
            for frame in c.decode(vs):
                rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                first_time = frame.time
                break
        except av.error.FFmpegError as e:
            raise MediaError(path, "probe", f"first video frame undecodable ({e})") from None
        if first_time is None:
            raise MediaError(path, "probe", "video stream has no decodable frames")
        w, h = vs.codec_context.width, vs.codec_context.height
        if rotation in (90, 270):
            w, h = h, w
        durations = [s.duration * s.time_base for s in c.streams if s.duration and s.time_base]
        duration = float(c.duration / av.time_base) if c.duration else float(max(durations, default=0.0))
        video_duration = own_duration(c, vs, [s for s in (vs, a) if s is not None], duration)
        fps = frame_rate(vs)
        a_start = float(a.start_time * a.time_base) if a is not None and a.start_time is not None else first_time
        return MediaInfo(path=str(path), size_bytes=st.st_size, mtime=st.st_mtime, duration=duration,
                         video_duration=video_duration,
                         has_video=True, has_audio=a is not None, fps=fps, width=w, height=h,
                         rotation=rotation, video_start=float(first_time), video_stream=vs.index,
                         audio_stream=a.index if a is not None else -1, audio_start=a_start,
                         audio_sample_rate=a.codec_context.sample_rate if a is not None else 0,
                         audio_channels=channel_layout(a.codec_context)[1] if a is not None else 0)


def frame_rate(stream) -> float:
    """The average frame rate, at most the stream's base rate (the lowest rate that represents its
    timestamps): PyAV's FFmpeg (8.1) states an average of 60000 for NTSC DV, 29.97 fps, and the
    last frame was then shown for 1/60000 s."""
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    base = float(stream.base_rate) if stream.base_rate else 0.0
    return base if 0 < base < rate else rate


def main_stream(streams, kind: str):
    """The stream a recording's picture or sound is taken from when it has several: not a cover
    picture, the one marked default if any is, then, as ffmpeg's command line chooses, the largest
    picture or the most channels (the first of equals). None when there is none."""
    candidates = [s for s in streams if not (kind == "video" and s.disposition & av.stream.Disposition.attached_pic)]
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    defaults = [s for s in candidates if s.disposition & av.stream.Disposition.default]
    candidates = defaults or candidates
    if kind == "video":
        return max(candidates, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0))
    return max(candidates, key=lambda s: channel_layout(s.codec_context)[1])


def own_duration(container, video, streams: list, duration: float) -> float:
    """The video stream's own duration, what its decoded extent is held against: the stream's stated
    one when the streams' stated ends account for the container's (a camera that stopped before
    the microphone), else the container's (a header that claims more than any track holds, or a
    stream that states none). A stream lasts at most from its start to the container's end: ffmpeg's
    Matroska muxer tags a track with where it ends, not how long it lasts, so a picture that starts
    after the sound would otherwise be held against more than it holds (and called truncated)."""
    stated = stream_duration(video)
    ends = [stream_start(s) + d for s in streams if (d := stream_duration(s)) is not None]
    if stated is None or not ends:
        return duration
    container_end = (container.start_time or 0) / av.time_base + duration
    if container_end > max(ends) + TRUNCATION_TOLERANCE_S:
        return duration
    return min(stated, container_end - stream_start(video))


def stream_start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None and stream.time_base else 0.0


def stream_duration(stream) -> float | None:
    """A stream's own duration (s) as the container states it: MP4/MOV for every track, Matroska
    and WebM as a DURATION tag (ffmpeg writes one per track: where the track ends, which own_duration
    bounds); None when it states none (MPEG-TS)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    try:
        h, m, sec = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def keyframe_gap(info: MediaInfo, at: float) -> float | None:
    """How far before ``at`` (s, video clock) a seek for it lands: the distance to the keyframe a
    decode starting there begins with (None when the file cannot be read there)."""
    try:
        with _open(Path(info.path)) as c:
            stream = c.streams[info.video_stream]
            c.seek(int((at + info.video_start) / stream.time_base), stream=stream, backward=True)
            for packet in c.demux(stream):
                if packet.pts is not None:
                    return max(0.0, at - (float(packet.pts * stream.time_base) - info.video_start))
    except (MediaError, av.error.FFmpegError):
        return None
    return None


@dataclass
class AudioTrack:
    """Decoded audio on the video clock: ``samples[k]`` is timeline sample ``start_sample + k``
    (timeline sample 0 = video time zero)."""

    samples: np.ndarray  # (N,) float32, first channel
    sample_rate: int
    decode_errors: int
    gaps: list[tuple[int, int]]  # [start, end) timeline samples with no decoded audio (zeros)
    start_sample: int = 0

    @property
    def duration(self) -> float:
        """Seconds of really decoded audio."""
        return (len(self.samples) - sum(b - a for a, b in self.gaps)) / self.sample_rate

    def window(self, i0: int, i1: int) -> np.ndarray:
        """Timeline samples [i0, i1), cut to what exists."""
        a, b = max(i0 - self.start_sample, 0), max(i1 - self.start_sample, 0)
        return self.samples[a:b]

    def valid_fraction(self, i0: int, i1: int) -> float:
        """Share of timeline samples [i0, i1) that were really decoded."""
        if i1 <= i0:
            return 0.0
        lo, hi = self.start_sample, self.start_sample + len(self.samples)
        have = max(0, min(i1, hi) - max(i0, lo))
        lost = sum(max(0, min(b, i1) - max(a, i0)) for a, b in self.gaps)
        return max(0.0, have - lost) / (i1 - i0)


# FFmpeg's default layout for a number of channels (av_channel_layout_default)
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1",
                   10: "5.1.4", 12: "7.1.4", 16: "hexadecagonal", 24: "22.2"}


def channel_layout(codec_context) -> tuple[str, int]:
    """The description and channel count of an audio track's layout, read safely.

    PyAV (17 and 18) copies a channel layout into its Python object without its channel map and
    frees that map when the object goes: for a layout in a custom channel order (multichannel
    PCM in MOV files, described "8 channels (FL+FR+...)") the map is then freed twice and the
    process aborts. The object of such a layout is therefore kept alive (a few bytes per file)."""
    layout = codec_context.layout
    described, n = layout.name, layout.nb_channels
    if "channels" in described:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(layout))
    return described, n


def native_layout(codec_context, path: str) -> str | None:
    """A named layout with the track's channel count for a track whose own layout is in a custom
    order (see channel_layout); None for every other track. Frames decoded with a custom layout
    crash PyAV the same way, so those tracks are decoded by a context of ours that carries the
    named layout instead: the same samples, and only the first channel is used (the reference's).
    A layout of no stated order ("2 channels": WMA, PCM in MXF) has no channel map to free twice
    and is decoded as it is: a context of ours cannot open every decoder (WMA needs the stream's
    block size), and each of its packets then failed."""
    described, n = channel_layout(codec_context)
    if "channels" not in described or described == f"{n} channels":
        return None
    if n not in DEFAULT_LAYOUTS:
        raise MediaError(path, "decode-audio", f"{described}: an audio layout socialfeat cannot decode")
    return DEFAULT_LAYOUTS[n]


class AudioStream:
    """The audio track on the video clock, decoded front to back as windows are asked for.

    Holds only the samples from the last :meth:`release` point on, at the model's rate and
    first channel only, so memory does not grow with the recording's length (the whole
    track of a long recording at 48 kHz stereo would take about 0.9 GB per hour). The
    samples are those :func:`load_audio` returns: same decoder, resampler and placement.
    Frames are placed by their timestamps: audio lost to a damaged packet (or missing
    before the audio stream starts) leaves a recorded silent gap instead of shifting later audio.
    """

    def __init__(self, info: MediaInfo, sample_rate: int = 16000, start: float | None = None,
                 end: float | None = None, chunk_seconds: float | None = None):
        """``start``/``end``: a window of the track (s), reached by seeking. ``chunk_seconds``: decode
        the track in independent chunks on that grid of the video clock (each started by a seek a
        little before its start, its decoder's state fresh), so that the samples of a chunk do not
        depend on where decoding began: a recording decoded in parts (pipeline.SPAN_SECONDS) gives the
        same numbers as decoding it whole. ``start`` must then lie on the grid."""
        self.info, self.sample_rate = info, sample_rate
        self.start_sample = 0 if start is None else max(0, int(round(start * sample_rate)))
        self.end_limit = None if end is None else int(round(end * sample_rate))
        self.chunk_seconds = chunk_seconds
        self.chunk_samples = int(round(chunk_seconds * sample_rate)) if chunk_seconds else None
        self.cursor = self.start_sample  # timeline sample after the last one placed
        self.held_from = self.start_sample  # samples before this were released
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (timeline start, samples)
        self.gaps: list[tuple[int, int]] = []  # [start, end) timeline samples with no decoded audio (zeros)
        self.gap_samples = 0  # in all gaps, released ones included
        # gaps after the track's start (audio lost there, not a stream that starts late), released ones included
        self.inner_gap_samples = 0
        self.audio_end = 0  # timeline sample after the last sample really decoded
        self.decoded_in_chunk: dict[int, int] = {}  # grid chunk (0 without a grid) -> samples really decoded
        self.decode_errors = 0
        self.channel_power: np.ndarray | None = None  # sum of squares per channel (2 channels or more) ...
        self.channel_samples = 0  # ... over this many samples
        self._measures_channels = True
        self.failure: Exception | None = None  # the demuxer gave up (the first time it did)
        self._pending: tuple[int, np.ndarray] | None = None  # a frame timed ahead of the cursor (see _place)
        self.failure_at: float | None = None  # ... at this time (s, video clock)
        self.finished = False
        self._container = None
        self._decoder_end: int | None = None  # timeline sample where the current decoder stops (grid)
        if self.chunk_samples and self.start_sample % self.chunk_samples:
            raise ValueError(f"audio decoded in chunks of {chunk_seconds} s must start on that grid, not at {start}")
        self._open_decoder(start if start else None)

    def _open_decoder(self, at: float | None) -> None:
        """A fresh decoder from ``at`` (s; None: the beginning), stopping at the next grid point.

        For AAC (what nearly every recording carries) the next chunk's decoder is a new codec
        context on the container already open, which decodes exactly as a container opened anew
        (tested) without parsing its index again: tens of milliseconds for an hour-long MP4,
        several per cent of decoding its 30-s chunk. Other codecs open the container again."""
        fresh_context = (self._container is not None
                         and self._container.streams[self.info.audio_stream].codec_context.name == "aac")
        if not fresh_context:
            if self._container is not None:
                self._container.close()
            self._container = _open(Path(self.info.path))
        stream = self._container.streams[self.info.audio_stream]
        layout = native_layout(stream.codec_context, self.info.path)
        if layout is not None:  # see native_layout: decoded by a context of ours, with a named layout
            fresh_context = True
            self._measures_channels = False  # (reading its frames' other channels crashes PyAV too)
        self._decode = self._fresh_context(stream, layout).decode if fresh_context else stream.decode
        if at:
            margin = 0.5  # seek lands on an earlier packet; decode a little before the window
            self._container.seek(int(max(0.0, at + self.info.video_start - margin) / stream.time_base),
                                 stream=stream, backward=True)
        self._resampler = av.AudioResampler(format="fltp", layout=layout or stream.codec_context.layout.name,
                                            rate=self.sample_rate)
        self._setup: tuple[str, str, int] | None = None  # (format, layout, rate) of the frames it takes
        self._time_base: tuple[int, int] | None = None
        self._packets = self._container.demux(stream)
        if self.chunk_samples:
            self._decoder_end = (self.cursor // self.chunk_samples + 1) * self.chunk_samples

    @staticmethod
    def _fresh_context(stream, layout: str | None = None) -> av.CodecContext:
        """A new decoder for ``stream``'s packets, with no state from the packets before."""
        source = stream.codec_context
        ctx = av.CodecContext.create(source.name, "r")
        ctx.extradata = source.extradata
        ctx.sample_rate, ctx.layout = source.sample_rate, layout or source.layout
        if layout is not None and source.format is not None:  # (PCM decoders need it given)
            ctx.format = source.format
        return ctx

    def _limit(self) -> int | None:
        """Where placing stops: the window's end or the current chunk's, whichever comes first."""
        ends = [x for x in (self.end_limit, self._decoder_end) if x is not None]
        return min(ends) if ends else None

    # ------------------------------------------------------------ decoding
    def _place(self, t: float | None, data: np.ndarray) -> None:
        """Place a frame by its timestamp. A frame timed after the cursor by less than its own length
        waits for the next: if that one follows on from the cursor, the timestamp alone jumped (the Ogg
        demuxer times a Vorbis packet after a long block up to 448 samples late and the next right
        again), and the frame goes at the cursor; otherwise audio was lost before it."""
        pos = self.cursor if t is None else int(round((t - self.info.video_start) * self.sample_rate))
        if self._pending is not None:
            held_pos, held = self._pending
            self._pending = None
            self._put(self.cursor if pos <= self.cursor + len(held) + AUDIO_JITTER_SAMPLES else held_pos, held)
        elif AUDIO_JITTER_SAMPLES < pos - self.cursor < len(data):
            self._pending = (pos, data)
            return
        self._put(pos, data)

    def _place_pending(self) -> None:
        """The frame still waiting, where its timestamp says (nothing follows it)."""
        if self._pending is not None:
            held_pos, held = self._pending
            self._pending = None
            self._put(held_pos, held)

    def _put(self, pos: int, data: np.ndarray) -> None:
        if abs(pos - self.cursor) <= AUDIO_JITTER_SAMPLES:
            pos = self.cursor
        limit = self._limit()
        if limit is not None:
            pos = min(pos, max(limit, self.cursor)) if pos > self.cursor else pos
        if pos > self.cursor:  # samples lost: keep the timeline, fill with silence
            self._gap(pos)
        elif pos < self.cursor:  # overlap or before the window: keep what is already placed
            data = data[self.cursor - pos:]
        if limit is not None:
            data = data[: max(0, limit - self.cursor)]
        if len(data):
            self.chunks.append((self.cursor, data))
            key = self.cursor // self.chunk_samples if self.chunk_samples else 0
            self.decoded_in_chunk[key] = self.decoded_in_chunk.get(key, 0) + len(data)
            self.cursor += len(data)
            self.audio_end = self.cursor

    def _gap(self, to: int) -> None:
        self.chunks.append((self.cursor, np.zeros(to - self.cursor, np.float32)))
        self.gaps.append((self.cursor, to))
        self.gap_samples += to - self.cursor
        track_start = (self.info.audio_start - self.info.video_start) * self.sample_rate
        if self.cursor > track_start + AUDIO_JITTER_SAMPLES:
            self.inner_gap_samples += to - self.cursor
        self.cursor = to

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """``frame`` at the model's rate. Sound whose rate or layout changes midway (a broadcast, a
        camcorder's files joined into one MPEG-TS) gets a fresh resampler from the change on: PyAV's
        refuses such a frame (the video was an error), or hands it on unconverted when it was set up
        as a passthrough (a first part already at the model's rate: the rest was garbled)."""
        setup = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._setup is not None and setup != self._setup:
            self._take(self._resampler.resample(None))
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=self.sample_rate)
            self._time_base = None
        self._setup = setup
        return self._resampler.resample(frame)

    def _take(self, frames) -> None:
        for out in frames:
            if self._time_base is None:  # the resampler's, the same for all its frames (read once: a Fraction
                tb = out.time_base  # per frame costs more than placing it)
                self._time_base = (tb.numerator, tb.denominator) if tb else (0, 1)
            num, den = self._time_base
            # pts * num / den: integer division correctly rounded, as float(pts * time_base)
            t = out.pts * num / den if out.pts is not None and num else None
            # the first channel only (as the reference reads it), copied out of the frame
            first = np.frombuffer(out.planes[0], np.float32, count=out.samples).copy()
            self._measure_channels(out, first)
            self._place(t, first)

    def _measure_channels(self, out: av.AudioFrame, first: np.ndarray) -> None:
        """Add up each channel's power (see quiet_first_channel): a recording whose sound is on
        another channel than the first (a stereo interview with one lavalier microphone per channel)
        must not pass silently as audio."""
        planes = out.planes
        if len(planes) < 2 or not self._measures_channels:
            return
        power = [float(np.dot(first, first))]
        power += [float(np.dot(c, c)) for c in (np.frombuffer(p, np.float32, count=out.samples) for p in planes[1:])]
        if self.channel_power is None or len(self.channel_power) != len(power):  # (a layout that changes midway
            self.channel_power, self.channel_samples = np.zeros(len(power)), 0  # counts from the change on)
        self.channel_power += power
        self.channel_samples += out.samples

    def _pull(self) -> None:
        """Decode the next packet; at the end (or the window's end), flush and close; at a grid
        point, go on with a fresh decoder. A demuxer that gives up ends the chunk, not the track
        (a part of the recording decoded on its own would go on after it too)."""
        if self._at_chunk_end():
            self._next_chunk()
            return
        try:
            packet = None if self._reached_end() else next(self._packets, None)
        except av.error.FFmpegError as e:
            if self.failure is None:
                self.failure, self.failure_at = e, self.cursor / self.sample_rate
            self._place_pending()
            if self._decoder_end is not None and (self.end_limit is None or self._decoder_end < self.end_limit):
                if self._decoder_end > self.cursor:
                    self._gap(self._decoder_end)
                self._next_chunk()
                return
            packet = None
        if packet is None:
            self._take(self._resampler.resample(None))
            self._place_pending()
            self.close()
            return
        try:
            frames = self._decode(packet)
        except av.error.FFmpegError:
            self.decode_errors += 1
            return
        for frame in frames:
            self._take(self._resample(frame))

    def _at_chunk_end(self) -> bool:
        return (self._decoder_end is not None and self.cursor >= self._decoder_end
                and (self.end_limit is None or self.cursor < self.end_limit))

    def _next_chunk(self) -> None:
        self._place_pending()
        self._open_decoder(self.cursor // self.chunk_samples * self.chunk_seconds)

    def _reached_end(self) -> bool:
        return self.end_limit is not None and self.cursor >= self.end_limit

    def ensure(self, i1: int | None = None) -> None:
        """Decode until timeline sample ``i1`` is placed (None: to the end of the track)."""
        while not self.finished and (i1 is None or self.cursor < i1):
            self._pull()

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._container.close()

    # ------------------------------------------------------------ reading
    def window(self, i0: int, i1: int) -> np.ndarray:
        """Timeline samples [i0, i1), cut to what exists."""
        self.ensure(i1)
        if i0 < self.held_from and self.held_from > self.start_sample:
            raise RuntimeError(f"audio before sample {self.held_from} was already released")
        i0, i1 = max(i0, self.start_sample), min(i1, self.cursor)
        parts = [c[max(0, i0 - s): max(0, i1 - s)] for s, c in self.chunks if s < i1 and s + len(c) > i0]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def valid_fraction(self, i0: int, i1: int) -> float:
        """Share of timeline samples [i0, i1) that were really decoded."""
        if i1 <= i0:
            return 0.0
        self.ensure(i1)
        have = max(0, min(i1, self.cursor) - max(i0, self.start_sample))
        lost = sum(max(0, min(b, i1) - max(a, i0)) for a, b in self.gaps)
        return max(0.0, have - lost) / (i1 - i0)

    def release(self, before: int) -> None:
        """Samples before timeline sample ``before`` will not be asked for again: drop them."""
        self.held_from = max(self.held_from, before)
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= self.held_from:
            self.chunks.popleft()
        self.gaps = [g for g in self.gaps if g[1] > self.held_from]

    @property
    def n_samples(self) -> int:
        """Timeline samples placed so far (decoded audio and gaps), released ones included."""
        return self.cursor - self.start_sample

    def decoded_samples(self, first_chunk: int = 0, end_chunk: int | None = None) -> int:
        """Samples really decoded in grid chunks [first_chunk, end_chunk) (all of them by default)."""
        return sum(n for k, n in self.decoded_in_chunk.items() if k >= first_chunk and (end_chunk is None or k < end_chunk))

    @property
    def duration(self) -> float:
        """Seconds of really decoded audio so far (all of it once finished)."""
        return (self.n_samples - self.gap_samples) / self.sample_rate

    def read_all(self) -> AudioTrack:
        """Decode the rest and return the whole track (or window) held at once."""
        self.ensure()
        if self.failure is not None:
            raise self.failure
        pieces = [c for _, c in self.chunks]
        samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        first = self.chunks[0][0] if self.chunks else self.start_sample
        return AudioTrack(samples=samples, sample_rate=self.sample_rate, decode_errors=self.decode_errors,
                          gaps=list(self.gaps), start_sample=first)


QUIET_FIRST_CHANNEL_DB = 30.0  # the first channel this far below the loudest other: its sound is elsewhere
SOUND_FLOOR_DBFS = -50.0  # ... and that channel really carries sound (not two near-silent channels)


def quiet_first_channel(channel_power: np.ndarray | None, n_samples: int) -> int | None:
    """The channel (1-based) that carries the sound when the first channel, the only one the models
    hear, is near-silent beside it; None otherwise (mono, sound on the first channel, or no sound)."""
    if channel_power is None or len(channel_power) < 2 or n_samples <= 0:
        return None
    loudest = int(np.argmax(channel_power[1:])) + 1
    level_dbfs = 10 * np.log10(max(channel_power[loudest] / n_samples, 1e-30))
    quiet = channel_power[0] < channel_power[loudest] * 10 ** (-QUIET_FIRST_CHANNEL_DB / 10)
    return loudest + 1 if quiet and level_dbfs > SOUND_FLOOR_DBFS else None


def load_audio(info: MediaInfo, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> AudioTrack:
    """Audio at ``sample_rate``, first channel (as the reference dataloaders read it),
    on the video clock. Whole track by default, or the window [start, end) (seconds),
    reached by seeking. Extraction streams the track instead (:class:`AudioStream`).
    """
    stream = AudioStream(info, sample_rate, start, end)
    try:
        return stream.read_all()
    finally:
        stream.close()


@dataclass
class DecodedFrame:
    time: float  # seconds on the clip clock
    rgb: np.ndarray  # (H, W, 3) uint8, rotation applied


# One decoder thread unless a process asks for more (use_decoder_threads; 0: libavcodec's choice, a
# thread per core). With frame threads a damaged packet's error surfaces packets later, and PyAV then
# drops the frames still queued behind it: a truncated file's last frames, and so its clips, depended
# on the thread count, that is on ``--workers``. Extraction gets its parallelism from workers instead.
_decoder_threads = 1


def use_decoder_threads(n: int) -> None:
    """Decoder threads for every video this process opens from now on (pretraining's data
    loaders give each worker its share of the cores; extraction keeps one, see above)."""
    global _decoder_threads
    _decoder_threads = max(0, int(n))


def available_cores() -> int:
    """Cores this process may run on (the affinity mask a scheduler such as SLURM sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class NonrefSkipper:
    """Tells the decoder to skip non-reference frames that can never be handed out.

    FrameStream hands out, for each requested time t, the last frame whose pts <= t. A
    packet with pts p may be skipped only if a frame q with p < q <= t is sure to come out
    (t: the earliest request still open, so every later request has it too): then p is never
    the last frame before any request, nor the last frame of the video (``last_time``). q is
    sure when its packet went to the decoder in the default mode and was accepted: with one
    decoder thread errors are reported when a packet is sent. Only non-reference frames are
    skipped by libavcodec (nothing is predicted from them), so every other frame decodes to
    the same pixels. With B-frames the anchor following them is sent first, so they go;
    without B-frames every packet is the latest so far and nothing is skipped.

    Damage: a packet that fails makes FrameStream decode again without skipping (see
    _frames). The one fact that can still change: a skipped packet whose slice header is damaged
    is not reported (libavcodec returns success for a packet that started no picture while it
    skips) unless another packet of the video fails.
    """

    def __init__(self, stream, video_start: float):
        self.ctx, self.video_start = stream.codec_context, video_start
        self.seconds = float(stream.time_base)  # per pts unit
        self.sure_pts: int | None = None  # latest pts of a packet decoded in the default mode
        self.sure_time = math.inf  # its time (s, video clock)
        self.skipping = False
        self.packets_skippable = 0  # packets sent while non-reference frames were skipped

    def before(self, packet, wanted: float) -> None:
        """Set the mode for ``packet``, given the earliest open request (s, video clock)."""
        pts, sure = packet.pts, self.sure_pts
        # (at_times takes a frame up to 1e-6 s after t as shown at t: without that margin here,
        # rounding in sure_time cannot turn a frame that is not shown into one that is)
        skip = pts is not None and sure is not None and pts < sure and self.sure_time <= wanted
        if skip != self.skipping:
            self.ctx.skip_frame = "NONREF" if skip else "DEFAULT"
            self.skipping = skip
        self.packets_skippable += skip

    def accepted(self, packet) -> None:
        """``packet`` was decoded without error."""
        pts = packet.pts
        if not self.skipping and pts is not None and (self.sure_pts is None or pts > self.sure_pts):
            self.sure_pts, self.sure_time = pts, pts * self.seconds - self.video_start


class FrameStream:
    """Decode a video once, front to back, and hand out the frame shown at each
    requested time (the last frame whose pts <= t). Only the frames asked for
    are converted to RGB; nothing else is kept, so memory does not grow with
    the length of the video. Damaged packets are skipped and counted. With one
    decoder thread, H.264 frames that can never be handed out are not decoded
    (NonrefSkipper): a worker asks for a few frames per second.
    """

    def __init__(self, info: MediaInfo, threads: int | None = None, seek_to: float | None = None):
        """``threads``: decoder threads (default: the process setting, see
        use_decoder_threads). ``seek_to``: start decoding at a keyframe before this
        time (s) instead of the beginning, for reading a window or a part of a long
        recording: the frames handed out from ``seek_to`` on are those of decoding
        everything (a demuxer that lands after it makes decoding seek further back, at
        last start from the beginning: SEEK_MARGINS_S)."""
        self.info = info
        self._seek_to = seek_to
        self._from = seek_to  # damage before it is another part's (the seek may fall back further)
        self._until: Callable[[], float | None] | None = None  # at_times' ``until``: damage from it on too
        self._margin = 0  # index in SEEK_MARGINS_S
        self.decode_errors = 0
        self.io_error = False  # reading the file failed (not its content): worth another try later
        self.last_time: float | None = None  # time of the last decoded frame
        self.time_jump: tuple[float, float] | None = None  # (from, to) s: where timestamps first jump back
        self.frame_interval = 1.0 / info.fps if info.fps > 0 else 0.04
        self._threads = _decoder_threads if threads is None else threads
        self._wanted = math.inf  # earliest time (s) still to be handed out; set by at_times
        self.skipper: NonrefSkipper | None = None
        self._reformatter = VideoReformatter()

    def _can_skip(self, stream) -> bool:
        """Skipping needs errors reported as packets are sent: one decoder thread (frame
        threads report them packets later), and a decoder whose skipping is tested."""
        return skip_nonref and self._threads == 1 and stream.codec_context.name in SKIP_NONREF_CODECS

    def _frames(self) -> Iterator[av.VideoFrame]:
        """Decoded frames in presentation order. When a packet fails (or the demuxer gives up)
        after frames were skipped, decoding starts over without skipping and goes on from that
        packet: how a damaged picture is concealed may depend on pictures skipped before it,
        so from the damage on the frames must be those of decoding everything."""
        while True:
            try:
                failed_at = yield from self._decode(skip=True)
                break
            except _LandedLate:  # (rare, before any frame went out) the seek went past the first frame
                self._margin += 1  # wanted: seek further back, at last decode from the beginning
                if self._margin == len(SEEK_MARGINS_S):
                    self._seek_to = None
                self.decode_errors, self.io_error, self.last_time = 0, False, None
        if failed_at is not None:
            yield from self._decode(skip=False, resume=failed_at)

    def _open_video(self, c):
        stream = c.streams[self.info.video_stream]
        stream.thread_type = "AUTO"
        if self._threads:
            stream.codec_context.thread_count = self._threads
        if self._seek_to:
            # the demuxer seeks by decoding time; a keyframe is shown up to a few frames later
            target = max(0.0, self._seek_to - SEEK_MARGINS_S[self._margin]) + self.info.video_start
            c.seek(int(target / stream.time_base), stream=stream, backward=True)
        return stream

    def _decode(self, skip: bool, resume: tuple[int, float] | None = None):
        """Decode front to back, skipping frames when allowed (NonrefSkipper). Returns (index of
        the packet that failed, time of the last frame handed on) when it stopped on damage after
        skipping, else None. ``resume``: such a point; the frames a decode of everything gives
        before it were handed on already (or skipped safely) and are held back."""
        with _open(Path(self.info.path)) as c:
            stream = self._open_video(c)
            skipper = self.skipper = NonrefSkipper(stream, self.info.video_start) \
                if skip and self._can_skip(stream) else None
            packets = c.demux(stream)
            done_at, done_until = resume if resume is not None else (0, -math.inf)
            last = -math.inf  # time of the last frame handed on
            landing = bool(self._seek_to)  # the first frame after a seek is checked
            at: float | None = None  # time of the last packet read
            for i in itertools.count():
                try:
                    packet = next(packets)
                except StopIteration:
                    return None
                except av.error.FFmpegError as e:
                    if skipper is not None and skipper.packets_skippable:
                        return i, last
                    self.decode_errors += self._owns(at)  # demuxer hit damaged or missing data: stop here
                    self.io_error = isinstance(e, OSError)
                    return None
                at = self._packet_time(packet)
                if packet.size == 0 and packet.pts is not None:
                    continue  # "the frame before, again" (libtheora); the end's empty packet (no time) flushes
                if skipper is not None:
                    skipper.before(packet, self._wanted)
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    if skipper is not None and skipper.packets_skippable:
                        return i, last
                    skipper = None  # nothing skipped yet: go on decoding everything
                    self.decode_errors += self._owns(at)
                    continue
                if skipper is not None:
                    skipper.accepted(packet)
                for frame in frames:
                    if landing and frame.time is not None:
                        landing = False
                        if frame.time - self.info.video_start > self._seek_to + 1e-6:
                            raise _LandedLate
                    if i >= done_at or (frame.time is not None and frame.time > done_until):
                        last = max(last, frame.time) if frame.time is not None else last
                        yield frame
        return None

    def _packet_time(self, packet: av.Packet) -> float | None:
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.time_base is None:
            return None
        return float(ts * packet.time_base) - self.info.video_start

    def _owns(self, t: float | None) -> bool:
        """Whether damage in a packet of time ``t`` (s; None: unknown) is this stream's to count. A part
        of a recording decodes from a keyframe before its start and on to the first frame at or after
        its end: damage there is the neighbouring part's, which decodes it too, and counting it in both
        would count it twice (a recording decoded in parts must tell what decoding it whole tells)."""
        if t is None:
            return True
        if self._from and t < self._from - 1e-6:  # (a decode from the start owns what precedes 0 too)
            return False
        stop = self._until() if self._until is not None else None
        return stop is None or t < stop - 1e-6

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # one converter for the stream: frame.to_ndarray(format=...) would set up a new swscale
        # context for every frame (2.2x the time here, far more on a GPU server's cores); same pixels
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        if self.info.rotation:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=self.info.rotation // 90))
        return rgb

    def _next_wanted(self, times: Iterator[float]) -> float | None:
        """The next requested time, also told to the decoding loop (frames before it may be skipped)."""
        t = next(times, None)
        self._wanted = math.inf if t is None else t
        return t

    def at_times(self, times: Iterator[float], until: Callable[[], float | None] | None = None
                 ) -> Iterator[tuple[float, DecodedFrame | None]]:
        """For each time of a non-decreasing sequence, yield (time, frame shown then).

        Times before the first frame get the first frame; times later than one
        frame interval after the last decoded frame get None. Once the times are
        served, decoding goes on to the end of the video (``last_time`` then tells its
        decodable extent), or, with ``until``, to the first frame at or after the time
        it returns (None: the end).
        """
        times = iter(times)
        self._until = until
        t = self._next_wanted(times)
        shown = None  # (time, undecoded-to-RGB frame) of the latest frame with pts <= t
        cached: DecodedFrame | None = None

        def convert(entry) -> DecodedFrame:
            nonlocal cached
            if cached is None or cached.time != entry[0]:
                cached = DecodedFrame(entry[0], self._to_rgb(entry[1]))
            return cached

        frames = self._frames()
        for frame in frames:
            if frame.time is None:
                continue
            ft = float(frame.time) - self.info.video_start
            if self.last_time is not None and ft < self.last_time - TIME_JUMP_S:  # not one timeline
                self.time_jump = self.time_jump or (self.last_time, ft)  # (recordings joined end to end)
                continue
            self.last_time = ft if self.last_time is None else max(self.last_time, ft)
            while t is not None and ft > t + 1e-6:
                yield t, convert(shown if shown is not None else (ft, frame))
                t = self._next_wanted(times)
            if t is None:
                stop = until() if until is not None else None
                if stop is not None and ft >= stop - 1e-6:
                    frames.close()
                    break
                continue  # keep decoding (no conversion) so last_time tells the decodable extent
            shown = (ft, frame)
        while t is not None:  # end of stream: the last frame stays on screen one interval
            ok = shown is not None and t <= shown[0] + self.frame_interval + 1e-6
            yield t, convert(shown) if ok else None
            t = self._next_wanted(times)
