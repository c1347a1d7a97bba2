"""One clip's model inputs from decoded media: the single place that turns a time
window into (fbank, video tensor) plus its QC facts. Used by extraction (which
streams many clips per decode) and by pretraining (which seeks to random windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from socialfeat.media import AudioTrack, FrameStream, MediaError, MediaInfo, load_audio
from socialfeat.preprocess import PreprocessSpec, fbank, frames_tensor, video_input

# a sampled frame further than this from its requested time is flagged (or than 1.5 frame intervals
# of the video's own rate, for videos of a frame a second or slower: that is their normal)
FRAME_GAP_S = 0.5
AUDIO_COMPLETE = 0.99  # audio coverage below this (of the content) is flagged partial


def requested_times(spec: PreprocessSpec, start: float, window: float, end: float) -> list[float]:
    """Frame times of a clip that fall inside its real content [start, end)."""
    times = [t for t in spec.frame_times(start, window) if t < end - 1e-6]
    if not times:  # window shorter than the first sampling offset
        times = [start + (end - start) * spec.frame_offset]
    return times


def pad_frames(frames: list[torch.Tensor], n: int) -> tuple[list[torch.Tensor], int]:
    """Repeat the sequence as the Social-MAE reference does for short videos
    (tile, then keep the first n); returns the frames and how many are repeats."""
    if len(frames) >= n:
        return frames[:n], 0
    reps = n // len(frames) + 1
    return (frames * reps)[:n], n - len(frames)


@dataclass
class FrameList:
    """A clip's decoded frames (H, W, 3) uint8, not yet stacked: a decoding worker writes them
    straight into its shared slot (handover.SharedSlots.put), one copy instead of two."""
    frames: list[torch.Tensor]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.frames), *self.frames[0].shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.frames[0].dtype

    def stacked(self) -> torch.Tensor:
        return torch.stack(self.frames)


@dataclass
class ClipInputs:
    audio: torch.Tensor | None  # (target_length, 128) fbank, None when the clip has no audio
    video: torch.Tensor | FrameList  # model layout, or decoded frames (see build_clip_inputs)
    end: float  # end of real content (s)
    coverage: float
    n_frames_padded: int
    coverage_audio: float
    flags: list[str] = field(default_factory=list)
    n_distinct: int = 0  # distinct decoded frames among those sampled (a window shorter than the
    # sampling interval, or a slide show, shows one frame several times)


def build_clip_inputs(spec: PreprocessSpec, start: float, window: float, end: float,
                      frames: list[tuple[float, float, torch.Tensor]], audio: AudioTrack | None,
                      missing_audio: str = "nan", stack: bool = True, fps: float = 0.0) -> ClipInputs:
    """Inputs of the clip [start, end) in a window of ``window`` s.

    frames: (requested time, frame time, transformed frame (3, S, S)) in order; or
    decoded frames (H, W, 3) uint8, then ``video`` stays (T, H, W, 3) uint8 (see model_video),
    or, with ``stack`` False, a FrameList of them.
    """
    coverage = min(1.0, (end - start) / window)
    flags = []
    if coverage < 1.0 - 1e-6:
        flags.append("partial_window")
    tensors, n_rep = pad_frames([f for _, _, f in frames], spec.num_frames)
    if tensors[0].dtype == torch.uint8 and len({t.shape for t in tensors}) > 1:
        tensors = [frames_tensor(t[None], spec)[0] for t in tensors]  # the frame size changed mid-clip
    n_distinct = len({got for _, got, _ in frames})
    if n_rep or n_distinct < len(frames):
        flags.append("frames_repeated")
    if max(abs(req - got) for req, got, _ in frames) > max(FRAME_GAP_S, 1.5 / fps if fps > 0 else 0.0):
        flags.append("frame_gap")
    a_tensor, a_cov = None, 0.0
    if audio is not None:
        i0, i1 = int(round(start * audio.sample_rate)), int(round(end * audio.sample_rate))
        samples = audio.window(i0, i1)
        a_cov = audio.valid_fraction(i0, i1)
        if len(samples) and a_cov > 0:
            a_tensor = fbank(torch.from_numpy(samples.copy()), audio.sample_rate, spec)
            if a_cov < AUDIO_COMPLETE:
                flags.append("audio_partial")
    if a_tensor is None:
        flags.append("no_audio")
        if missing_audio == "silence":
            n = max(1, int(round((end - start) * spec.sample_rate)))
            a_tensor = fbank(torch.zeros(n), spec.sample_rate, spec)
            flags.append("silence_embedded")
    if not stack and tensors[0].dtype == torch.uint8:
        return ClipInputs(a_tensor, FrameList(tensors), end, coverage, n_rep, min(1.0, a_cov), flags, n_distinct)
    stacked = torch.stack(tensors)
    video = stacked if stacked.dtype == torch.uint8 else video_input(stacked, spec)
    return ClipInputs(a_tensor, video, end, coverage, n_rep, min(1.0, a_cov), flags, n_distinct)


def model_video(video: torch.Tensor, spec: PreprocessSpec, device: torch.device) -> torch.Tensor:
    """A clip's video input in model layout on ``device``, transforming frames that
    arrive as decoded uint8 (T, H, W, 3) there."""
    if video.dtype != torch.uint8:
        return video.to(device, non_blocking=True)
    return video_input(frames_tensor(video.to(device, non_blocking=True), spec), spec)


def read_clip(info: MediaInfo, spec: PreprocessSpec, start: float, window: float,
              end: float | None = None) -> ClipInputs:
    """Decode one window directly (seeking), e.g. a random pretraining clip."""
    end = min(start + window, info.duration) if end is None else end
    times = requested_times(spec, start, window, end)
    stream = FrameStream(info, seek_to=start)
    frames = []
    for t, frame in stream.at_times(times):
        if frame is None:
            break
        frames.append((t, frame.time, frames_tensor(frame.rgb[None], spec)[0]))
        if len(frames) == len(times):
            break
    if not frames:
        raise MediaError(info.path, "decode-video", f"no decodable frame in [{start:.2f}, {end:.2f}) s")
    audio = load_audio(info, spec.sample_rate, start, end) if info.has_audio else None
    return build_clip_inputs(spec, start, window, end, frames, audio, fps=info.fps)

