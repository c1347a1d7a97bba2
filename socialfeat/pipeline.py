"""Worker side of extraction: one video in, model-ready clips out.

Runs inside decoding worker processes (``workers.py``). For each video: read the
container facts, plan the clips, then decode frames and audio front to back and
emit each clip as soon as its frames are in, followed by one record describing
the video. Memory does not grow with the recording's length: only the frames of
clips being assembled and the audio from the earliest pending clip on are held,
and clips are planned as decoding reaches them (a header that claims days of
video does not make the plan run away). Problems become error rows; they never
raise out of here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import get_worker_info

from socialfeat.clips import MIN_COVERAGE, Clip, iter_clips
from socialfeat.faces import (
    FaceDetector,
    TrackIds,
    boxes_for_all_frames,
    crop,
    link_tracks,
)
from socialfeat.media import (
    QUIET_FIRST_CHANNEL_DB,
    TRUNCATION_TOLERANCE_S,
    AudioStream,
    FrameStream,
    MediaError,
    MediaInfo,
    available_cores,
    keyframe_gap,
    probe,
    quiet_first_channel,
    use_decoder_threads,
)
from socialfeat.model_inputs import build_clip_inputs, requested_times
from socialfeat.preprocess import PreprocessSpec, frames_tensor
from socialfeat.store import Failure, VideoStatus
from socialfeat.vad import SpeechDetector, speech_fraction
from socialfeat.walk import VideoRef

log = logging.getLogger(__name__)
RAW_FRAMES_MAX_PIXELS = 1280 * 720  # larger frames: more bytes to move (and to hold in shared memory) than it saves
# A recording of fixed windows or of segments from a file may be decoded in parts (spans of this grid,
# whole spans to a part) by several workers, so that a long file does not finish last alone
# (workers.WorkerPool cuts it only when a worker would idle). Audio is decoded in chunks of the same
# grid whatever the parts (media.AudioStream), so a recording gives the same numbers decoded whole or in parts.
SPAN_SECONDS = 30.0
# A long recording decoded by a worker ends its part every CHECKPOINT_SPANS spans (10 minutes of
# recording) and goes on as a new part: each finished part is journalled (store.Journal.write_span),
# so a run cut off in a recording of hours resumes from its last finished part, not from its start.
# The cost is one seek per part (decoding from the keyframe before it; keyframes at most
# MAX_SPLIT_KEYFRAME_GAP_S apart); the numbers are those of the recording decoded whole.
CHECKPOINT_SPANS = 20
# Audio missing inside its track (timestamps jump) from this much on makes the video damaged: a
# dropped AAC frame is 21-64 ms; smaller jumps are the muxers' rounding.
LOST_AUDIO_S = 0.1
MAX_SPLIT_KEYFRAME_GAP_S = 10.0  # keyframes further apart: a part would decode too much before its start


@dataclass(frozen=True)
class PlanSettings:
    clip_seconds: float
    hop_seconds: float | None
    missing_audio: str  # 'nan' (no audio embedding) or 'silence' (embed silence)
    speech: bool = False  # clips from voice activity (``--segments speech``)
    vad_min_gap: float = 0.3  # s: shorter pauses do not split a speech region
    vad_min_speech: float = 0.25  # s: shorter speech regions are dropped
    crop: str = "none"  # 'face': square crops around detected faces instead of the whole frame
    faces: str = "main"  # with crop='face': 'main' (the clip's main face track) or 'all' (a row per track)
    require_face: bool = False  # with crop='face': clips without a face are not embedded
    # 'bf16': the model runs under bf16 autocast, whose patch embeddings round their inputs
    # to bf16 first; rounding them here instead gives the same numbers and halves the bytes
    # that travel from the workers to the model.
    precision: str = "fp32"
    # the embeddings to compute (``extract(embeddings=...)``); part of the resume fingerprint
    embeddings: tuple[str, ...] = ("joint", "audio", "visual")
    # True: hand the sampled frames over as decoded (uint8) and let the model's process resize
    # them on its GPU, so that workers only decode. Applies to whole-frame Social-MAE inputs of
    # videos up to RAW_FRAMES_MAX_PIXELS; everything else is transformed here.
    raw_frames: bool = False


@dataclass
class ClipItem:
    video_pos: int
    clip: dict[str, Any]  # a row of the clips table (without embeddings)
    audio: torch.Tensor | None  # (target_length, 128) fbank or None
    # model layout; or, uint8 (T, H, W, 3), sampled frames still to be transformed where the model runs
    video: torch.Tensor
    skip: bool = False  # a row without embeddings (e.g. no face with --require-face)


@dataclass
class VideoStarted:
    """Sent when a video is taken up (``duration`` None) and once its container is read:
    the engine times each video from these (a stalled decode is stopped). ``splittable``: its
    remaining spans may be handed to other workers (see PartCut)."""
    video_pos: int
    duration: float | None = None
    splittable: bool = False


@dataclass
class PartCut:
    """The worker asked to share its video keeps spans before ``at``; spans from ``at`` to
    the end of its part are for another worker."""
    video_pos: int
    at: int


@dataclass
class VideoDone:
    video_pos: int
    video: dict[str, Any]  # a row of the videos table
    errors: list[dict[str, Any]]
    n_clips: int
    failure: str = ""  # a store.Failure value when the verdict is not ok: whether a rerun tries again
    span: tuple[int, int | None] = (0, None)  # the part of the video this record covers (SPAN_SECONDS grid)
    audio_samples: int = 0  # audio samples really decoded in that part (merged into audio_duration_s)
    audio_end: int = 0  # timeline sample after the part's last decoded audio sample (merged into audio_gap_s)
    video_duration: float | None = None  # the video stream's own duration (s), once probed (merge_parts' verdict)

    def holds(self, clip: dict[str, Any]) -> bool:
        """Whether a clip row is one of this part's: the part decodes the clips that start in its spans
        (VideoRun.own_clips), whatever their order in the plan (segments may overlap)."""
        first, end = self.span
        span = span_of(clip["start_s"])
        return first <= span and (end is None or span < end)


@dataclass
class PartDone:
    """A finished part of a video decoded in several (its record; the video's own VideoDone comes
    once every part is done): the engine journals it, so a rerun need not decode it again."""
    video_pos: int
    done: VideoDone


def error_row(ref: VideoRef, stage: str, message: str) -> dict[str, Any]:
    """A row of the errors table."""
    return {"video_id": ref.video_id, "path": ref.relpath, "stage": stage, "message": message}


def video_row(ref: VideoRef, status: VideoStatus = VideoStatus.OK, error: str = "") -> dict[str, Any]:
    """A new row of the videos table (the facts are filled in as they are learnt)."""
    return {"video_id": ref.video_id, "path": ref.relpath, "source_path": str(ref.path),
            "status": status.value, "error": error, "n_clips": 0}


class ClipPlan:
    """The clips of a video in the order of their starts, taken from the plan as decoding reaches them
    (segments, which may overlap and go back in time, come sorted: VideoRun.plan_clips).

    ``bound(ci)`` is a lower bound of the start of clip ``ci`` and of every later clip (its own
    start): frame requests before it can be served, and audio before it can be released.
    """

    def __init__(self, clips: Iterable[Clip]):
        self._source = ((c, c.start) for c in clips)
        self.clips: list[Clip] = []
        self.slots: list[int] = []  # frames requested per clip
        self._bounds: list[float] = []

    def __len__(self) -> int:
        return len(self.clips)

    def bound(self, ci: int) -> float:
        if ci < len(self._bounds):
            return self._bounds[ci]
        return self._bounds[-1] if self._bounds else 0.0

    def requests(self, spec: PreprocessSpec) -> Iterator[tuple[float, int, int]]:
        """Frame requests (time, clip index, slot) of all clips in time order, so that one
        front-to-back decode serves overlapping windows too; clips are planned on the way."""
        heap: list[tuple[float, int, int]] = []
        for clip, bound in self._source:
            while heap and heap[0][0] < bound:
                yield heapq.heappop(heap)
            times = requested_times(spec, clip.start, clip.window, clip.end)
            self.clips.append(clip)
            self._bounds.append(bound)
            self.slots.append(len(times))
            for k, t in enumerate(times):
                heapq.heappush(heap, (t, len(self.clips) - 1, k))
        while heap:
            yield heapq.heappop(heap)


class VideoRun:
    """One video through the worker's steps: probe, audio, plan, frames and clips, status.

    Holds the video's row and error rows as they are learnt. ``items`` runs the steps
    in order and yields each clip as soon as its frames are in (memory stays flat in
    the recording's length), then the VideoDone record.

    ``span``: the part of the recording to decode, spans [first, end) of the SPAN_SECONDS grid
    (end None: to the end; the clips are those that start in it). ``cut_requested``: asked before
    each clip of a splittable video whether its worker should share the rest; it then keeps the
    span it is in and half of the spans after it, and yields a PartCut. ``checkpoint_spans``: a
    splittable video's part also ends (PartCut) once it has covered that many spans.
    """

    def __init__(self, pos: int, ref: VideoRef, spec: PreprocessSpec, plan: PlanSettings,
                 span: tuple[int, int | None] = (0, None), cut_requested: Callable[[], bool] | None = None,
                 stack_frames: bool = True, checkpoint_spans: int | None = None):
        self.pos, self.ref, self.spec, self.plan = pos, ref, spec, plan
        self.checkpoint_spans = checkpoint_spans
        self.video_duration: float | None = None  # the video stream's, once probed
        self.stack_frames = stack_frames  # False: decoded frames as a FrameList (a worker's slot takes them)
        self.first, self.end = span
        self.cut_requested = cut_requested
        self.splittable = False
        self.cut_notices: list[int] = []
        self.video = video_row(ref)
        self.errors: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []  # error-table rows that say something, not that anything broke
        self.n_emitted = 0
        self.failure = ""  # see store.Failure
        self.audio: AudioStream | None = None
        self.regions: list[tuple[float, float]] | None = None  # speech regions (--segments speech)
        self.detector = FaceDetector() if plan.crop == "face" else None
        self.track_ids = TrackIds()

    # ------------------------------------------------------------ bookkeeping
    def problem(self, stage: str, message: str, status: VideoStatus | None = None) -> None:
        """Record an error row; with ``status``, it is also the video's verdict."""
        self.errors.append(error_row(self.ref, stage, message))
        if status is not None:
            self.video.update(status=status.value, error=f"{stage}: {message}")

    @property
    def is_part(self) -> bool:
        return self.first > 0 or self.end is not None

    def done(self) -> VideoDone:
        self.video["n_clips"] = self.n_emitted
        if self.failure != Failure.TRANSIENT and self.video["status"] != VideoStatus.OK:
            self.failure = Failure.CONTENT  # the same bytes give the same verdict
        samples = self.audio.decoded_samples(self.first, self.end) if self.audio is not None else 0
        return VideoDone(self.pos, self.video, self.errors + self.notes, self.n_emitted, self.failure,
                         (self.first, self.end), samples, self.audio.audio_end if self.audio is not None else 0,
                         self.video_duration)

    # ------------------------------------------------------------ the steps
    def items(self, segments: list[dict[str, Any]] | None) -> Iterator[ClipItem | VideoStarted | VideoDone]:
        info = self.probe()
        if info is not None:
            self.splittable = self.is_part or self.may_split(info, segments)
            yield VideoStarted(self.pos, info.duration, self.splittable)
            self.open_audio(info)
            try:
                segments = self.segments_to_plan(segments, info.duration)
                if segments is not False:
                    clips = self.plan_clips(info.duration, segments)
                    if self.splittable:
                        clips = self.own_clips(clips, info.duration)
                    yield from self.clips_in_order(info, ClipPlan(clips))
                self.finish_audio(info)
                if segments is not False:
                    self.settle_status(info)
            finally:
                if self.audio is not None:
                    self.audio.close()
        yield self.done()

    def probe(self) -> MediaInfo | None:
        """Container facts; None (and an error verdict) when the file cannot be opened."""
        try:
            st = self.ref.path.stat()
            self.video.update(size_bytes=st.st_size, mtime=st.st_mtime)
        except OSError:
            pass
        try:
            info = probe(self.ref.path)
        except MediaError as e:
            self.problem(e.stage, e.cause, VideoStatus.ERROR)
            self.failure = Failure.CONTENT if e.in_file else Failure.TRANSIENT
            return None
        self.video.update(size_bytes=info.size_bytes, mtime=info.mtime, duration_s=info.duration, fps=info.fps,
                          width=info.width, height=info.height, rotation=info.rotation, has_audio=info.has_audio,
                          video_stream=info.video_stream, audio_stream=info.audio_stream if info.has_audio else None)
        return info

    def plan_clips(self, duration: float, segments: list[dict[str, Any]] | None) -> Iterable[Clip]:
        """The clips in the order of their starts: fixed windows as they come, the pieces of segments
        sorted (their clip_index stays their place in the segments' order), so that decoding
        front to back finishes them in turn and a part holds the clips that start in its spans."""
        clips = iter_clips(self.ref.video_id, duration, self.plan.clip_seconds, self.plan.hop_seconds, segments)
        return clips if segments is None else sorted(clips, key=lambda c: c.start)

    def may_split(self, info: MediaInfo, segments) -> bool:
        """Whether the video may be decoded in parts (shared by idle workers, journalled every
        CHECKPOINT_SPANS spans): fixed windows or segments from a file, with a segment inside
        the video (not detected speech, which needs the whole audio track first, nor face tracks,
        whose identities depend on what came before); long enough; keyframes close enough that a
        part does not decode much before its start."""
        if self.plan.speech or self.detector is not None:
            return False
        if segments is not None and not starting_before(segments, info.duration):
            return False
        if info.duration < 2 * SPAN_SECONDS:
            return False
        gap = keyframe_gap(info, info.duration / 2)
        return gap is not None and gap <= MAX_SPLIT_KEYFRAME_GAP_S

    def own_clips(self, clips: Iterable[Clip], duration: float) -> Iterator[Clip]:
        """The clips that start in this part; before each, a cut if one is asked for."""
        n_spans = max(1, math.ceil(duration / SPAN_SECONDS - 1e-9))
        for clip in clips:
            span = span_of(clip.start)
            if span < self.first:
                continue
            if self.end is not None and span >= self.end:
                return
            self.offer_cut(span, n_spans)
            if self.end is not None and span >= self.end:  # (a checkpoint ended the part here)
                return
            yield clip

    def offer_cut(self, span: int, n_spans: int) -> None:
        """In ``span``: if the worker is asked to share, it keeps this span and half of those after
        it (rounded down); the others go (their clips are not planned yet)."""
        end = self.end if self.end is not None else n_spans
        if self.checkpoint_spans and span - self.first >= self.checkpoint_spans and span < end:
            self.end = span  # a checkpoint: this part ends before ``span``, the rest is a new part
            self.cut_notices.append(span)
            return
        if self.cut_requested is None or end - span < 2 or not self.cut_requested():
            return
        self.end = end - (end - span) // 2
        self.cut_notices.append(self.end)

    def own_end(self) -> float | None:
        """Where this part's decoding stops (s); None: at the end of the video."""
        return None if self.end is None else self.end * SPAN_SECONDS

    def open_audio(self, info: MediaInfo) -> None:
        """The audio track, decoded at the model's rate as the clips need it, in chunks of the span
        grid (the same samples whether the video is decoded whole or in parts)."""
        if info.has_audio:
            try:
                self.audio = AudioStream(info, self.spec.sample_rate, start=self.first * SPAN_SECONDS or None,
                                         chunk_seconds=SPAN_SECONDS)
            except (MediaError, OSError, ValueError) as e:
                self.audio_unreadable(e)

    def audio_unreadable(self, e: Exception) -> None:
        self.problem("decode-audio", f"audio unreadable ({e})")
        if isinstance(e, OSError) or (isinstance(e, MediaError) and not e.in_file):
            self.failure = Failure.TRANSIENT

    def finish_audio(self, info: MediaInfo) -> None:
        """Decode the rest of the track (its extent is a fact of the video); damage is noted,
        the video stays usable."""
        audio = self.audio
        if audio is not None:
            end = self.own_end()
            audio.ensure(None if end is None else int(round(end * audio.sample_rate)))
            decoded = audio.decoded_samples(self.first, self.end) / audio.sample_rate
            if audio.failure is not None and decoded == 0:
                self.audio_unreadable(audio.failure)
                self.audio = None
            else:
                # An audio stream that simply ends before the picture is common and plays fine: a QC
                # fact (clips past its end carry audio_partial / no_audio), not damage.
                picture_end = self.video.get("decoded_duration_s")  # (None: no frames decoded, e.g. no segments)
                self.video.update(audio_duration_s=decoded, audio_gap_s=None if picture_end is None else
                                  audio_gap(picture_end, audio.audio_end, audio.sample_rate))
                if audio.failure is not None:
                    self.problem("decode-audio", f"audio unreadable from {audio.failure_at:.2f} s ({audio.failure})")
                    if isinstance(audio.failure, OSError):
                        self.failure = Failure.TRANSIENT
                elif audio.decode_errors:
                    self.problem("decode-audio", f"{audio.decode_errors} damaged audio packet(s) skipped")
                elif audio.inner_gap_samples >= LOST_AUDIO_S * audio.sample_rate:  # (demuxers that resync
                    # silently past damage: Matroska, MPEG-TS)
                    self.problem("decode-audio", f"{audio.inner_gap_samples / audio.sample_rate:.2f} s of audio "
                                 "missing inside the track (lost or damaged packets)")
        if audio is not None and self.audio is not None:
            self.note_quiet_first_channel(audio)
        self.video["has_audio"] = self.audio is not None and self.audio.n_samples > 0

    def note_quiet_first_channel(self, audio: AudioStream) -> None:
        """A note (not damage) when the sound is on another channel than the first, which is all the
        models hear (the reference's choice): an interview with one microphone per stereo channel, say."""
        channel = quiet_first_channel(audio.channel_power, audio.channel_samples)
        if channel is not None:
            self.notes.append(error_row(self.ref, "audio-channels", (
                f"the first audio channel, the only one the models hear, is near-silent while channel {channel} "
                f"carries sound (over {QUIET_FIRST_CHANNEL_DB:.0f} dB louder): that sound is not in the audio "
                f"embeddings; to use it, make a file with it on the first channel (ffmpeg -af "
                f"'pan=mono|c0=c{channel - 1}')")))

    def segments_to_plan(self, segments: list[dict[str, Any]] | None,
                         duration: float) -> list[dict[str, Any]] | None | bool:
        """The segments the clips come from: the annotation's, detected speech, or None for
        fixed windows over the whole video; False (with a verdict) when there is nothing to plan."""
        if segments is not None and not segments:
            self.problem("plan", "no segments for this video in the segments file", VideoStatus.SKIPPED)
            self.video["error"] = "no segments for this video"
            return False
        if segments is not None:
            segments = self.within_video(segments, duration)
            return segments or False
        if not self.plan.speech:
            return segments
        if self.audio is None:
            self.problem("plan", "no audio to detect speech in", VideoStatus.NO_CLIPS)
            return False
        self.regions = self.detect_speech(self.audio)
        if not self.regions:
            self.problem("plan", "no speech detected", VideoStatus.NO_CLIPS)
            return False
        return [{"start": a, "end": b} for a, b in self.regions]

    def detect_speech(self, audio: AudioStream) -> list[tuple[float, float]]:
        """Speech regions of the whole track (voice activity needs all of it before any clip is planned),
        from a decoding pass of its own that keeps the detector's probabilities, not the track: the
        clips' audio is then decoded again as they need it (``audio``, untouched here)."""
        track = AudioStream(audio.info, audio.sample_rate, chunk_seconds=audio.chunk_seconds)
        detector = SpeechDetector()
        try:
            at = 0
            while True:
                track.ensure(at + int(SPAN_SECONDS * track.sample_rate))
                if track.cursor <= at:
                    break
                detector.feed(track.window(at, track.cursor))
                at = track.cursor
                track.release(at)
        finally:
            track.close()
        return detector.regions(self.plan.vad_min_gap, self.plan.vad_min_speech)

    def within_video(self, segments: list[dict[str, Any]], duration: float) -> list[dict[str, Any]]:
        """Segments that start before the video's end (those running past it are cut there by the
        planner). Segments from a CSV that run past the end are noted with their line; when none
        is left, the verdict says so, and says when the times look like milliseconds."""
        tolerance = TRUNCATION_TOLERANCE_S
        kept = starting_before(segments, duration)
        lines = {"cut": [], "dropped": []}
        for seg in segments:
            if "segment_row" in seg and seg["end"] > duration + tolerance:
                lines["cut" if seg in kept else "dropped"].append(f"{seg['segment_row']} "
                                                                  f"({seg['start']:g}-{seg['end']:g} s)")
        for what, found in lines.items():
            if found:
                self.notes.append(error_row(self.ref, "segments", f"segment line(s) {', '.join(found)} "
                                            f"{'run past' if what == 'cut' else 'start after'} the video's end "
                                            f"({duration:.2f} s): {what}"))
        if not kept:
            # in milliseconds they fit the video, and they lie far beyond it (not a few seconds past its end)
            looks_ms = (all(seg["end"] / 1000 <= duration + tolerance for seg in segments)
                        and max(seg["end"] for seg in segments) >= 50 * duration)
            hint = "; the times look like milliseconds: the segments file needs seconds" if looks_ms else ""
            self.problem("plan", f"every segment starts after the video's end ({duration:.2f} s){hint}",
                         VideoStatus.NO_CLIPS)
        return kept

    def clips_in_order(self, info: MediaInfo, plan: ClipPlan) -> Iterator[ClipItem]:
        """Decode the frames front to back; emit each clip as soon as its frames are in,
        then the clips cut short by the end of what could be decoded."""
        requests, times = itertools.tee(plan.requests(self.spec))
        got: dict[int, dict[int, tuple[float, float, Any]]] = {}
        stream = FrameStream(info, seek_to=self.first * SPAN_SECONDS or None)
        raw = (self.plan.raw_frames and self.detector is None and self.spec.frame_transform == "squash-bgr"
               and info.width * info.height <= RAW_FRAMES_MAX_PIXELS)
        next_clip = 0
        frames = stream.at_times((r[0] for r in times), until=self.own_end)
        try:
            for (t, ci, k), (_, frame) in zip(requests, frames):
                yield from self.cuts_made()
                if frame is None:  # past the end of the decodable video: plan no further
                    break
                got.setdefault(ci, {})[k] = (t, frame.time, self.pixels(frame.rgb, raw))
                while next_clip < len(plan) and len(got.get(next_clip, {})) == plan.slots[next_clip]:
                    yield from self.finish(plan.clips[next_clip], got.pop(next_clip), plan.clips[next_clip].end)
                    next_clip += 1
                    self.release_audio(plan.bound(next_clip))
            else:
                for _ in frames:  # decode the tail too (or to the part's end), so the decodable extent is known
                    pass
        except (MediaError, OSError) as e:
            self.problem("decode-video", str(e))
        yield from self.cuts_made()
        if stream.io_error:
            self.failure = Failure.TRANSIENT
        if stream.time_jump is not None:
            self.problem("decode-video", "timestamps jump back from {:.2f} s to {:.2f} s (recordings joined end to "
                         "end?): the frames after the jump are not used".format(*stream.time_jump))
        # the last frame shown for one average frame interval, but not past the stream's stated end
        # (a slide-show's average interval is seconds long)
        last = stream.last_time or 0.0
        decoded_end = min(last + stream.frame_interval, max(last, info.video_duration))
        self.video["decoded_duration_s"] = round(decoded_end, 6)
        self.video["decode_errors"] = stream.decode_errors
        self.decoded_any = stream.last_time is not None
        for ci in range(next_clip, len(plan)):
            clip = plan.clips[ci]
            # (the video's first clip is kept however short; a part's first clip is not the video's)
            if (min(clip.end, decoded_end) - clip.start) / clip.window + 1e-6 >= MIN_COVERAGE or clip.clip_index == 0:
                yield from self.finish(clip, got.pop(ci, {}), decoded_end)

    def cuts_made(self) -> Iterator[PartCut]:
        while self.cut_notices:
            yield PartCut(self.pos, self.cut_notices.pop(0))

    def release_audio(self, before_s: float) -> None:
        """No clip still to come starts before ``before_s``: its audio is no longer needed."""
        if self.audio is not None:
            self.audio.release(int(round(before_s * self.audio.sample_rate)))

    def pixels(self, rgb: np.ndarray, raw: bool):
        """What a sampled frame travels as: decoded uint8 (resized where the model runs), the
        whole RGB frame (face cropping needs the clip's frames), or the model's input now."""
        if raw:
            return torch.from_numpy(rgb)
        if self.detector is not None:
            return rgb
        return frames_tensor(rgb[None], self.spec)[0]

    def finish(self, clip: Clip, frames_in: dict[int, tuple], content_end: float) -> Iterator[ClipItem]:
        end = min(clip.end, content_end)
        if not frames_in or end <= clip.start:
            return
        entries = [frames_in[k] for k in sorted(frames_in)]
        items = self.face_items(clip, end, entries) if self.detector is not None else \
            [self.clip_item(clip, end, entries, {})]
        self.n_emitted += len(items)
        yield from items

    def face_items(self, clip: Clip, end: float, entries: list) -> list[ClipItem]:
        """One item per selected face track, or one whole-frame item flagged no_face."""
        spec, plan = self.spec, self.plan
        tracks = link_tracks([self.detector(rgb) for _, _, rgb in entries])
        chosen = list(zip(self.track_ids.assign(tracks), tracks))
        if plan.faces == "main" and chosen:
            chosen = [max(chosen, key=lambda it: (len(it[1]), np.mean([b.w * b.h for b in it[1].values()])))]
        if not chosen:
            frames = [(t, g, frames_tensor(rgb[None], spec)[0]) for t, g, rgb in entries]
            return [self.clip_item(clip, end, frames, {"track": -1, "face_fraction": 0.0, "face_boxes": ""},
                                   skip=plan.require_face)]
        items = []
        for tid, track in chosen:
            boxes = [b.square() for b in boxes_for_all_frames(track, len(entries))]
            frames = [(t, g, frames_tensor(crop(rgb, b)[None], spec)[0]) for (t, g, rgb), b in zip(entries, boxes)]
            extra = {"track": tid, "face_fraction": round(len(track) / len(entries), 6),
                     "face_boxes": ";".join(b.text() for b in boxes)}
            items.append(self.clip_item(clip, end, frames, extra))
        return items

    def clip_item(self, clip: Clip, end: float, frames: list, extra: dict[str, Any], skip: bool = False) -> ClipItem:
        """The model inputs of one clip and its row of the clips table."""
        spec, plan = self.spec, self.plan
        x = build_clip_inputs(spec, clip.start, clip.window, end, frames, self.audio, plan.missing_audio,
                              stack=self.stack_frames, fps=self.video.get("fps") or 0.0)
        flags = x.flags + (["no_face"] if extra.get("track") == -1 else []) + (["skipped"] if skip else [])
        row = {"video_id": clip.video_id, "path": self.ref.relpath, "clip_index": clip.clip_index,
               "start_s": clip.start, "end_s": round(end, 6), "window_s": clip.window,
               "coverage": round(x.coverage, 6), "n_frames": x.n_distinct,
               "n_frames_padded": x.n_frames_padded, "has_audio": x.coverage_audio > 0,
               "coverage_audio": round(x.coverage_audio, 6), "qc_flags": ";".join(flags), **extra, **clip.extra}
        if self.regions is not None:
            row["speech_fraction"] = round(speech_fraction(self.regions, clip.start, end), 6)
        clip_audio, clip_video = x.audio, x.video
        if plan.precision == "bf16":
            clip_audio = clip_audio.to(torch.bfloat16) if clip_audio is not None else None
            if clip_video.dtype.is_floating_point:  # (decoded uint8 frames are transformed later)
                clip_video = clip_video.to(torch.bfloat16)
        return ClipItem(self.pos, row, clip_audio, clip_video, skip)

    def settle_status(self, info: MediaInfo) -> None:
        """The verdict from how far decoding got and what went wrong on the way."""
        decoded_end = self.video["decoded_duration_s"]
        self.video_duration = info.video_duration
        # the video stream's own extent: an audio track that runs on after the picture does not make it short
        target = info.video_duration if self.end is None else min(info.video_duration, self.end * SPAN_SECONDS)
        if not self.decoded_any and self.first > 0:  # a part past where the data ends (see merge_parts)
            self.video["decoded_duration_s"] = 0.0
            self.problem("decode-video", f"no decodable video frames after {self.first * SPAN_SECONDS:.2f} s "
                         f"of {info.video_duration:.2f} s (truncated or damaged file)", VideoStatus.TRUNCATED)
        elif not self.decoded_any:
            self.problem("decode-video", "no decodable video frames", VideoStatus.ERROR)
        elif decoded_end < target - max(TRUNCATION_TOLERANCE_S, 0.05 * info.video_duration):
            self.problem("decode-video", decoded_for(decoded_end, target), VideoStatus.TRUNCATED)
        elif self.video["decode_errors"]:
            self.problem("decode-video", damaged_packets(self.video["decode_errors"]),
                         VideoStatus.DAMAGED)
        if self.video["status"] == VideoStatus.OK and self.errors:  # damaged audio, or a decoder error mid-stream
            self.video.update(status=VideoStatus.DAMAGED.value,
                              error=self.errors[0]["stage"] + ": " + self.errors[0]["message"])
        if self.n_emitted == 0 and self.video["status"] in (VideoStatus.OK, VideoStatus.DAMAGED) and not self.is_part:
            self.video.update(status=VideoStatus.NO_CLIPS.value, error="plan: no clip could be formed")
            self.errors.append(error_row(self.ref, "plan", "no clip could be formed (video too short or undecodable)"))


def video_items(pos: int, ref: VideoRef, spec: PreprocessSpec, plan: PlanSettings,
                segments: list[dict[str, Any]] | None, span: tuple[int, int | None] = (0, None),
                cut_requested: Callable[[], bool] | None = None, stack_frames: bool = True,
                checkpoint_spans: int | None = None) -> Iterator[ClipItem | VideoStarted | PartCut | VideoDone]:
    """Clips of one video (or part of it), then its VideoDone record (see VideoRun for the steps)."""
    return VideoRun(pos, ref, spec, plan, span, cut_requested, stack_frames, checkpoint_spans).items(segments)


def guarded_video_items(pos: int, ref: VideoRef, spec: PreprocessSpec, plan: PlanSettings,
                        segments: list[dict[str, Any]] | None, span: tuple[int, int | None] = (0, None),
                        cut_requested: Callable[[], bool] | None = None, stack_frames: bool = True,
                        checkpoint_spans: int | None = None) -> Iterator[ClipItem | VideoStarted | PartCut | VideoDone]:
    """video_items, with an unexpected exception turned into the video's error record:
    one file never stops the batch."""
    try:
        yield from video_items(pos, ref, spec, plan, segments, span, cut_requested, stack_frames, checkpoint_spans)
    except Exception as e:
        log.exception("unexpected failure on %s", ref.path)
        video = video_row(ref, VideoStatus.ERROR, f"internal: {type(e).__name__}: {e}")
        yield VideoDone(pos, video, [error_row(ref, "internal", f"{type(e).__name__}: {e}")], -1, Failure.TRANSIENT,
                        span)


def spans_left(finished: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    """The parts of a recording still to decode, given the spans [first, end) of its finished parts."""
    left: list[tuple[int, int | None]] = []
    at = 0
    for first, end in sorted(finished, key=lambda span: span[0]):
        if first > at:
            left.append((at, first))
        if end is None:
            return left
        at = max(at, end)
    return left + [(at, None)]


def starting_before(segments: list[dict[str, Any]], duration: float) -> list[dict[str, Any]]:
    """The segments that start before the video's end (s)."""
    return [seg for seg in segments if seg["start"] < duration - 1e-6]


def span_of(t: float) -> int:
    """The span of the SPAN_SECONDS grid that time ``t`` (s) lies in."""
    return int(math.floor(t / SPAN_SECONDS + 1e-9))


FAILURE_ORDER = (Failure.CRASH, Failure.TIMEOUT, Failure.TRANSIENT, Failure.CONTENT)


def audio_gap(picture_end: float, audio_end: int, sample_rate: int) -> float:
    """How much earlier than the picture (its decoded end, s) the audio ends (``audio_end``: the
    timeline sample after its last decoded sample); 0 when it runs to the end or beyond."""
    return round(max(0.0, picture_end - audio_end / sample_rate), 3)


def decoded_for(decoded: float, target: float) -> str:
    """The error row (decode-video) of a video (or part) whose decoding ended before ``target`` (s)."""
    return f"video decoded for {decoded:.2f} s of {target:.2f} s (truncated or damaged file)"


def damaged_packets(n: int) -> str:
    """The error row (decode-video) of a video whose decoding skipped ``n`` damaged packets."""
    return f"{n} damaged video packet(s) skipped"


def _one_decode_row(errors: list[dict[str, Any]], tail: str, message: str | None
                    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """``errors`` with the parts' decode-video rows whose message ends in ``tail`` replaced by one row
    of ``message`` where the first stood (none when ``message`` is None); and that row. Unchanged
    (and None) when no part wrote such a row."""
    rows = [e for e in errors if e["stage"] == "decode-video" and e["message"].endswith(tail)]
    if not rows:
        return errors, None
    at = next(i for i, e in enumerate(errors) if e is rows[0])
    kept = [e for e in errors if not any(e is r for r in rows)]
    row = None if message is None else dict(rows[0], message=message)
    if row is not None:
        kept.insert(at, row)
    return kept, row


def merge_packet_rows(errors: list[dict[str, Any]], status: VideoStatus, decode_errors: int,
                      error: str) -> tuple[list[dict[str, Any]], str]:
    """The parts' 'damaged video packet(s) skipped' rows as decoding the video whole writes them: one
    row with the video's count when it is damaged, none when a worse verdict (truncated) tells of it.
    Returns the rows and the video's error text (which may quote a part's count)."""
    tail = damaged_packets(0)[1:]
    damaged = status is VideoStatus.DAMAGED and decode_errors
    errors, row = _one_decode_row(errors, tail, damaged_packets(decode_errors) if damaged else None)
    if row is not None and error.endswith(tail):
        error = f"{row['stage']}: {row['message']}"
    return errors, error


def merge_truncation_rows(errors: list[dict[str, Any]], message: str, error: str
                          ) -> tuple[list[dict[str, Any]], str]:
    """A truncated video's parts' truncation rows ('video decoded for ...', 'no decodable video frames
    after ...': which part ends where the data end depends on how the video was split) as one row of
    the video's own extent, ``message``, as decoding it whole writes it. Returns the rows and the
    video's error text."""
    errors, row = _one_decode_row(errors, " (truncated or damaged file)", message)
    return errors, error if row is None else f"decode-video: {message}"


def merge_parts(parts: list[VideoDone], sample_rate: int) -> VideoDone:
    """One video's record from the records of the parts that several workers decoded.

    Facts add up (clips, damaged packets, decoded audio); the decoded extent is the furthest
    any part reached; the verdict is the worst: an error in any part is the video's (its
    clips are then dropped, as for a video that failed whole), a part whose decoding stopped
    before its end makes the video damaged (the parts after it went on), the last part's
    truncation makes it truncated."""
    if len(parts) == 1:
        return parts[0]
    parts = sorted(parts, key=lambda d: d.span[0])
    video = dict(parts[0].video)
    n_clips = sum(max(0, d.n_clips) for d in parts)
    decoded = [d.video["decoded_duration_s"] for d in parts if d.video.get("decoded_duration_s") is not None]
    video.update(n_clips=n_clips, decoded_duration_s=max(decoded) if decoded else None,
                 decode_errors=sum(d.video.get("decode_errors") or 0 for d in parts),
                 has_audio=any(d.video.get("has_audio") for d in parts))
    if any("audio_duration_s" in d.video for d in parts):
        audio_s = sum(d.audio_samples for d in parts) / sample_rate
        video.update(audio_duration_s=audio_s, audio_gap_s=audio_gap(video["decoded_duration_s"] or 0.0,
                                                                     max(d.audio_end for d in parts), sample_rate))
    verdict = None
    for rank in (VideoStatus.ERROR, VideoStatus.TRUNCATED, VideoStatus.DAMAGED):
        for d in parts:
            status = VideoStatus(d.video["status"])
            if status is VideoStatus.TRUNCATED and d is not parts[-1]:
                status = VideoStatus.DAMAGED  # the parts after it were decoded
            if status is rank:
                verdict = (rank, d.video.get("error", ""))
                break
        if verdict:
            break
    errors = [e for d in parts for e in d.errors]
    # (notes that every part makes alike come once: segments past the video's end, sound off the first channel)
    errors = [e for i, e in enumerate(errors) if e["stage"] not in ("segments", "audio-channels") or e not in errors[:i]]
    if verdict is None and n_clips == 0:
        verdict = (VideoStatus.NO_CLIPS, "plan: no clip could be formed")
        errors.append({"video_id": video["video_id"], "path": video["path"], "stage": "plan",
                       "message": "no clip could be formed (video too short or undecodable)"})
    status, error = verdict or (VideoStatus.OK, "")
    errors, error = merge_packet_rows(errors, status, video["decode_errors"], error)
    durations = [d.video_duration for d in parts if d.video_duration is not None]
    if status is VideoStatus.TRUNCATED and durations and video["decoded_duration_s"] is not None:
        errors, error = merge_truncation_rows(errors, decoded_for(video["decoded_duration_s"], max(durations)), error)
    video.update(status=status.value, error=error)
    failures = {d.failure for d in parts}
    failure = "" if status is VideoStatus.OK else next((f for f in FAILURE_ORDER if f in failures), Failure.CONTENT)
    return VideoDone(parts[0].video_pos, video, errors, n_clips, failure)


def closing_items(parts: list[VideoDone], sample_rate: int) -> list[PartDone | VideoDone]:
    """What closes a video decoded in parts, ``parts[-1]`` the one that finished last: the merged
    record, preceded by that part's PartDone when the video failed in another part, so that its
    work is journalled for the retry as the earlier parts' was (a failed video keeps the files of
    its finished parts: store.Journal.write)."""
    merged = merge_parts(parts, sample_rate)
    if len(parts) > 1 and merged.video["status"] == VideoStatus.ERROR:
        return [PartDone(parts[-1].video_pos, parts[-1]), merged]
    return [merged]


def worker_init(_: int) -> None:
    """Parallelism comes from the workers themselves: one torch thread each, and the
    cores shared out among their decoders (many workers each starting a decoding
    thread per core would oversubscribe the machine)."""
    torch.set_num_threads(1)
    info = get_worker_info()
    use_decoder_threads(max(1, available_cores() // (info.num_workers if info else 1)))
