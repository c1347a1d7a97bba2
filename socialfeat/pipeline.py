"""Worker side of extraction: one video in, model-ready clips out.

Runs inside DataLoader worker processes. For each video: read the container
facts, decode the audio once, plan the clips, then decode the frames front to
back and emit each clip as soon as its frames are in (so memory does not grow
with the recording's length), followed by one record describing the video.
Problems become error rows; they never raise out of here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from socialfeat.clip_inputs import assemble, requested_times
from socialfeat.clips import MIN_COVERAGE, plan_video
from socialfeat.faces import (
    FaceDetector,
    TrackIds,
    boxes_for_all_frames,
    crop,
    link_tracks,
)
from socialfeat.inputs import VideoRef
from socialfeat.media import (
    TRUNCATION_TOLERANCE_S,
    FrameStream,
    MediaError,
    available_cores,
    load_audio,
    probe,
    use_decoder_threads,
)
from socialfeat.preprocess import PreprocessSpec, frames_tensor
from socialfeat.vad import speech_fraction, speech_regions

log = logging.getLogger(__name__)
RAW_FRAMES_MAX_PIXELS = 1280 * 720  # larger frames: more bytes to move (and to hold in shared memory) than it saves


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
class VideoDone:
    video_pos: int
    video: dict[str, Any]  # a row of the videos table
    errors: list[dict[str, Any]]
    n_clips: int


def _error(ref: VideoRef, stage: str, message: str) -> dict[str, Any]:
    return {"video_id": ref.video_id, "path": ref.relpath, "stage": stage, "message": message}


def video_items(pos: int, ref: VideoRef, spec: PreprocessSpec, plan: PlanSettings,
                segments: list[dict[str, Any]] | None) -> Iterator[ClipItem | VideoDone]:
    """Clips of one video, then its VideoDone record."""
    video: dict[str, Any] = {"video_id": ref.video_id, "path": ref.relpath, "source_path": str(ref.path),
                             "status": "ok", "error": "", "n_clips": 0}
    errors: list[dict[str, Any]] = []
    try:
        st = ref.path.stat()
        video.update(size_bytes=st.st_size, mtime=st.st_mtime)
    except OSError:
        pass
    try:
        info = probe(ref.path)
    except MediaError as e:
        video.update(status="error", error=f"{e.stage}: {e.cause}")
        errors.append(_error(ref, e.stage, e.cause))
        yield VideoDone(pos, video, errors, 0)
        return
    video.update(size_bytes=info.size_bytes, mtime=info.mtime, duration_s=info.duration, fps=info.fps,
                 width=info.width, height=info.height, rotation=info.rotation, has_audio=info.has_audio)

    audio = None
    if info.has_audio:
        try:
            audio = load_audio(info, spec.sample_rate)
            video["audio_duration_s"] = audio.duration
            if audio.duration < info.duration - max(TRUNCATION_TOLERANCE_S, 0.05 * info.duration):
                errors.append(_error(ref, "decode-audio", f"audio decoded for {audio.duration:.2f} s of "
                                     f"{info.duration:.2f} s (damaged or truncated audio)"))
            elif audio.decode_errors:
                errors.append(_error(ref, "decode-audio", f"{audio.decode_errors} damaged audio packet(s) skipped"))
        except (MediaError, OSError, ValueError) as e:  # the video is still usable
            errors.append(_error(ref, "decode-audio", f"audio unreadable ({e})"))
            audio = None
    video["has_audio"] = audio is not None and len(audio.samples) > 0

    if segments is not None and not segments:
        video.update(status="skipped", error="no segments for this video")
        errors.append(_error(ref, "plan", "no segments for this video in the segments file"))
        yield VideoDone(pos, video, errors, 0)
        return
    regions = None
    if plan.speech:
        if audio is None:
            video.update(status="no_clips", error="plan: no audio to detect speech in")
            errors.append(_error(ref, "plan", "no audio to detect speech in"))
            yield VideoDone(pos, video, errors, 0)
            return
        regions = speech_regions(audio.window(0, len(audio.samples) + audio.start_sample), audio.sample_rate,
                                 plan.vad_min_gap, plan.vad_min_speech)
        segments = [{"start": a, "end": b} for a, b in regions]
        if not segments:
            video.update(status="no_clips", error="plan: no speech detected")
            errors.append(_error(ref, "plan", "no speech detected"))
            yield VideoDone(pos, video, errors, 0)
            return
    clips = plan_video(ref.video_id, info.duration, plan.clip_seconds, plan.hop_seconds, segments)

    # Frame requests of all clips, sorted by time (overlapping windows interleave).
    requests: list[tuple[float, int, int]] = []
    slots_of: list[int] = []
    for ci, clip in enumerate(clips):
        valid = requested_times(spec, clip.start, clip.window, clip.end)
        slots_of.append(len(valid))
        requests += [(t, ci, k) for k, t in enumerate(valid)]
    requests.sort()
    got: dict[int, dict[int, tuple[float, float, torch.Tensor]]] = {}
    stream = FrameStream(info)
    n_emitted = 0

    detector = FaceDetector() if plan.crop == "face" else None
    track_ids = TrackIds()
    raw = (plan.raw_frames and detector is None and spec.frame_transform == "squash-bgr"
           and info.width * info.height <= RAW_FRAMES_MAX_PIXELS)

    def make_item(clip, end: float, frames: list, extra: dict[str, Any], skip: bool = False) -> ClipItem:
        x = assemble(spec, clip.start, clip.window, end, frames, audio, plan.missing_audio)
        flags = x.flags + (["no_face"] if extra.get("track") == -1 else []) + (["skipped"] if skip else [])
        row = {"video_id": clip.video_id, "path": ref.relpath, "clip_index": clip.clip_index,
               "start_s": clip.start, "end_s": round(end, 6), "window_s": clip.window,
               "coverage": round(x.coverage, 6), "n_frames": spec.num_frames - x.n_frames_padded,
               "n_frames_padded": x.n_frames_padded, "has_audio": x.coverage_audio > 0,
               "coverage_audio": round(x.coverage_audio, 6), "qc_flags": ";".join(flags), **extra, **clip.extra}
        if regions is not None:
            row["speech_fraction"] = round(speech_fraction(regions, clip.start, end), 6)
        clip_audio, clip_video = x.audio, x.video
        if plan.precision == "bf16":
            clip_audio = clip_audio.to(torch.bfloat16) if clip_audio is not None else None
            if clip_video.is_floating_point():  # (decoded uint8 frames are transformed later)
                clip_video = clip_video.to(torch.bfloat16)
        return ClipItem(pos, row, clip_audio, clip_video, skip)

    def face_items(clip, end: float, entries: list) -> list[ClipItem]:
        """One item per selected face track, or one whole-frame item flagged no_face."""
        tracks = link_tracks([detector(rgb) for _, _, rgb in entries])
        ids = track_ids.assign(tracks)
        chosen = list(zip(ids, tracks))
        if plan.faces == "main" and chosen:
            chosen = [max(chosen, key=lambda it: (len(it[1]), np.mean([b.w * b.h for b in it[1].values()])))]
        if not chosen:
            frames = [(t, g, frames_tensor(rgb[None], spec)[0]) for t, g, rgb in entries]
            return [make_item(clip, end, frames, {"track": -1, "face_fraction": 0.0, "face_boxes": ""},
                              skip=plan.require_face)]
        items = []
        for tid, track in chosen:
            boxes = [b.square() for b in boxes_for_all_frames(track, len(entries))]
            frames = [(t, g, frames_tensor(crop(rgb, b)[None], spec)[0]) for (t, g, rgb), b in zip(entries, boxes)]
            extra = {"track": tid, "face_fraction": round(len(track) / len(entries), 6),
                     "face_boxes": ";".join(b.text() for b in boxes)}
            items.append(make_item(clip, end, frames, extra))
        return items

    def finish(ci: int, frames_in: dict[int, tuple], content_end: float) -> list[ClipItem]:
        clip = clips[ci]
        end = min(clip.end, content_end)
        if not frames_in or end <= clip.start:
            return []
        entries = [frames_in[k] for k in sorted(frames_in)]
        if detector is not None:
            return face_items(clip, end, entries)
        return [make_item(clip, end, entries, {})]

    next_clip = 0
    frames = stream.at_times(r[0] for r in requests)
    try:
        for (t, ci, k), (_, frame) in zip(requests, frames):
            if frame is None:
                continue
            # face cropping needs the clip's full frames; otherwise transform at once (small tensors)
            if raw:
                pixels = torch.from_numpy(frame.rgb)
            elif detector is not None:
                pixels = frame.rgb
            else:
                pixels = frames_tensor(frame.rgb[None], spec)[0]
            got.setdefault(ci, {})[k] = (t, frame.time, pixels)
            # emit, in order, every clip whose frames are all in
            while next_clip < len(clips) and len(got.get(next_clip, {})) == slots_of[next_clip]:
                for item in finish(next_clip, got.pop(next_clip), clips[next_clip].end):
                    n_emitted += 1
                    yield item
                next_clip += 1
        for _ in frames:  # decode the tail too, so the decodable extent is known
            pass
    except (MediaError, OSError) as e:
        errors.append(_error(ref, "decode-video", str(e)))
    decoded_end = (stream.last_time or 0.0) + stream.frame_interval
    video["decoded_duration_s"] = round(decoded_end, 6)
    video["decode_errors"] = stream.decode_errors
    # clips cut short by the end of the decodable video
    while next_clip < len(clips):
        clip = clips[next_clip]
        if (min(clip.end, decoded_end) - clip.start) / clip.window + 1e-6 >= MIN_COVERAGE or next_clip == 0:
            for item in finish(next_clip, got.pop(next_clip, {}), decoded_end):
                n_emitted += 1
                yield item
        next_clip += 1
    if stream.last_time is None:
        video.update(status="error", error="decode-video: no decodable video frames")
        errors.append(_error(ref, "decode-video", "no decodable video frames"))
    elif decoded_end < info.duration - max(TRUNCATION_TOLERANCE_S, 0.05 * info.duration):
        msg = f"video decoded for {decoded_end:.2f} s of {info.duration:.2f} s (truncated or damaged file)"
        video.update(status="truncated", error=f"decode-video: {msg}")
        errors.append(_error(ref, "decode-video", msg))
    elif stream.decode_errors:
        msg = f"{stream.decode_errors} damaged video packet(s) skipped"
        video.update(status="damaged", error=f"decode-video: {msg}")
        errors.append(_error(ref, "decode-video", msg))
    if video["status"] == "ok" and errors:  # damaged audio, or a decoder error mid-stream
        video.update(status="damaged", error=errors[0]["stage"] + ": " + errors[0]["message"])
    if n_emitted == 0 and video["status"] in ("ok", "damaged"):
        video.update(status="no_clips", error="plan: no clip could be formed")
        errors.append(_error(ref, "plan", "no clip could be formed (video too short or undecodable)"))
    video["n_clips"] = n_emitted
    yield VideoDone(pos, video, errors, n_emitted)


class ClipDataset(IterableDataset):
    """Videos split round-robin over DataLoader workers; yields ClipItem / VideoDone."""

    def __init__(self, jobs: list[tuple[int, VideoRef, list[dict[str, Any]] | None]],
                 spec: PreprocessSpec, plan: PlanSettings):
        self.jobs, self.spec, self.plan = jobs, spec, plan

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for pos, ref, segs in self.jobs[wid::n]:
            try:
                yield from video_items(pos, ref, self.spec, self.plan, segs)
            except Exception as e:  # never let one file stop the batch
                log.exception("unexpected failure on %s", ref.path)
                video = {"video_id": ref.video_id, "path": ref.relpath, "source_path": str(ref.path),
                         "status": "error", "error": f"internal: {type(e).__name__}: {e}", "n_clips": 0}
                yield VideoDone(pos, video, [_error(ref, "internal", f"{type(e).__name__}: {e}")], -1)


def worker_init(_: int) -> None:
    """Parallelism comes from the workers themselves: one torch thread each, and the
    cores shared out among their decoders (many workers each starting a decoding
    thread per core would oversubscribe the machine)."""
    torch.set_num_threads(1)
    info = get_worker_info()
    use_decoder_threads(max(1, available_cores() // (info.num_workers if info else 1)))
