"""Training clips: random windows inside each video, drawn afresh every epoch.

Every random choice (which window, which patches are masked) is a pure function of
(seed, epoch, clip index), so a resumed run, a run with more workers or a run over
more processes sees exactly the same clips and masks.

A damaged clip (a file truncated or corrupt where the window falls) does not stop
training: a training clip is replaced by a stand-in clip drawn (as deterministically)
from another place of the corpus, so that batches keep their size; a validation clip
is left out. Each sample carries the clips it skipped (:class:`SkippedClip`), for the
run's log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Collection

import av
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from socialfeat.clips import plan_windows
from socialfeat.errors import SocialfeatError
from socialfeat.media import MediaError, MediaInfo, probe
from socialfeat.model_inputs import ClipInputs, read_clip
from socialfeat.preprocess import PreprocessSpec
from socialfeat.walk import VideoRef

log = logging.getLogger(__name__)


# What reading a damaged file raises: socialfeat's media errors, the decoder's, the
# operating system's (file gone or unreadable), and read_clip's ValueError for a window
# with no decodable frame (e.g. past the end of a truncated file).
DAMAGED_MEDIA = (MediaError, av.error.FFmpegError, OSError)  # a bug (ValueError ...) is not "damage"
MAX_STAND_INS = 20  # stand-ins tried for one damaged training clip before giving up


class DamagedCorpusError(SocialfeatError, RuntimeError):
    """A training clip and all its stand-ins were damaged: the corpus (or most of it) cannot be
    read. A DataLoader worker re-raises it with its traceback in the message; ``str`` gives the
    original one line (what the command prints)."""

    def __str__(self) -> str:
        text = super().__str__().rstrip()
        last = text.splitlines()[-1] if text else text
        return last.split(f"{type(self).__name__}: ", 1)[-1]


@dataclass(frozen=True)
class TrainVideo:
    ref: VideoRef
    info: MediaInfo


@dataclass(frozen=True)
class SkippedClip:
    """A clip that could not be read: which file, where, and why."""

    path: str
    start_s: float
    error: str


def read_clip_or_skip(info: MediaInfo, spec: PreprocessSpec, start: float, window: float,
                      end: float | None = None) -> ClipInputs | SkippedClip:
    """The clip's inputs, or a :class:`SkippedClip` when the file is damaged there."""
    try:
        return read_clip(info, spec, start, window, end)
    except DAMAGED_MEDIA as e:
        return SkippedClip(info.path, round(float(start), 3), f"{e.__class__.__name__}: {e}")


def collate_readable(samples: list) -> tuple[Any, list[SkippedClip]]:
    """(the batch of the samples that could be read, or None; every clip skipped).
    A sample is a :class:`SkippedClip` (left out) or a tensor tuple / dict, whose
    optional ``skipped`` entry lists the clips it stands in for."""
    skipped = [s for s in samples if isinstance(s, SkippedClip)]
    readable = [s for s in samples if not isinstance(s, SkippedClip)]
    for s in readable:
        if isinstance(s, dict):
            skipped += s.pop("skipped", [])
    return (default_collate(readable) if readable else None), skipped


def usable_videos(refs: list[VideoRef], spec: PreprocessSpec) -> tuple[list[TrainVideo], list[tuple[VideoRef, str]]]:
    """Videos that can train the model (readable, with audio, at least half a clip long), and the
    others with the reason each is left out (the run folder's videos.csv lists them)."""
    out, left_out = [], []
    for ref in refs:
        try:
            info = probe(ref.path)
        except MediaError as e:
            left_out.append((ref, f"{e.stage}: {e.cause}"))
            log.warning("skipping %s", e)
            continue
        if not info.has_audio:
            left_out.append((ref, "no audio track (pretraining needs both modalities)"))
        elif info.duration < spec.clip_seconds / 2:
            left_out.append((ref, f"shorter than half a clip ({info.duration:.2f} s)"))
        else:
            out.append(TrainVideo(ref, info))
            continue
        log.warning("skipping %s: %s", ref.path, left_out[-1][1])
    return out, left_out


def split_validation(videos: list[TrainVideo], fraction: float, seed: int,
                     held_out: Collection[str] | None = None) -> tuple[list, list]:
    """Hold out whole videos (never clips of a training video) for validation. ``held_out``: the
    relative paths a resumed run held out, which stay held out (videos added since train): drawn
    again over another set of videos, the split would move held-out videos into training."""
    if held_out is not None and any(v.ref.relpath in held_out for v in videos):
        return [v for v in videos if v.ref.relpath not in held_out], [v for v in videos if v.ref.relpath in held_out]
    if fraction <= 0 or len(videos) < 2:
        return videos, []
    order = np.random.default_rng([seed, 7]).permutation(len(videos))
    n_val = max(1, int(round(fraction * len(videos))))
    val = {int(i) for i in order[:n_val]}
    return [v for i, v in enumerate(videos) if i not in val], [v for i, v in enumerate(videos) if i in val]


class TrainClips(Dataset):
    """``clips_per_video`` clips per video (default: as many as fixed windows fit);
    random window starts per epoch (``random_windows``) or the fixed windows (validation).
    Damaged clips get stand-ins (``replace_damaged``, training) or are skipped (validation)."""

    def __init__(self, videos: list[TrainVideo], spec: PreprocessSpec, noise: str, n_audio_tokens: int,
                 n_video_tokens: int, seed: int, clips_per_video: int | None = None,
                 random_windows: bool = True, replace_damaged: bool = True):
        self.videos, self.spec, self.seed = videos, spec, seed
        self.noise, self.n_audio_tokens, self.n_video_tokens = noise, n_audio_tokens, n_video_tokens
        self.random_windows = random_windows
        self.replace_damaged = replace_damaged
        self.epoch = 0
        self.items: list[tuple[int, float]] = []  # (video, fixed window start)
        for vi, v in enumerate(videos):
            starts = [s for s, _ in plan_windows(0.0, v.info.duration, spec.clip_seconds)]
            n = clips_per_video or len(starts)
            self.items += [(vi, starts[k % len(starts)]) for k in range(n)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _noise(self, rng_seed: list[int], length: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(np.random.default_rng(rng_seed).integers(2 ** 62)))
        return torch.randn(length, generator=g) if self.noise == "normal" else torch.rand(length, generator=g)

    def _window(self, i: int, attempt: int) -> tuple[TrainVideo, float]:
        """(video, start) of clip ``i`` (attempt 0), or of its ``attempt``-th stand-in:
        a random window in the video of a random clip, a function of (seed, epoch, i, attempt)."""
        if attempt == 0:
            vi, fixed_start = self.items[i]
            if not self.random_windows:
                return self.videos[vi], fixed_start
            rng = np.random.default_rng([self.seed, self.epoch, i])
        else:
            rng = np.random.default_rng([self.seed, self.epoch, i, 4, attempt])
            vi = self.items[int(rng.integers(len(self.items)))][0]
        video = self.videos[vi]
        return video, float(rng.uniform(0.0, max(0.0, video.info.duration - self.spec.clip_seconds)))

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedClip:
        """Clip ``i`` with its masking noise; a damaged training clip is replaced by a
        stand-in (listed under ``skipped``), a damaged validation clip is returned as
        its :class:`SkippedClip`."""
        skipped: list[SkippedClip] = []
        for attempt in range(MAX_STAND_INS + 1 if self.replace_damaged else 1):
            video, start = self._window(i, attempt)
            x = read_clip_or_skip(video.info, self.spec, start, self.spec.clip_seconds)
            if not isinstance(x, SkippedClip):
                return self._sample(i, x, skipped)
            skipped.append(x)
        if not self.replace_damaged:
            return skipped[0]
        raise DamagedCorpusError(f"training clip {i} and {MAX_STAND_INS} stand-ins drawn from the corpus are all "
                                 f"damaged (last: {skipped[-1].path}: {skipped[-1].error}): are the files readable?")

    def _sample(self, i: int, x: ClipInputs, skipped: list[SkippedClip]) -> dict[str, Any]:
        audio = x.audio if x.audio is not None else torch.zeros(self.spec.target_length, self.spec.num_mel_bins)
        return {"audio": audio, "video": x.video, "index": torch.tensor(i),
                "noise_a": self._noise([self.seed, self.epoch, i, 1], self.n_audio_tokens),
                "noise_v": self._noise([self.seed, self.epoch, i, 2], self.n_video_tokens),
                "skipped": skipped}


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of one process: the global batch ``b`` of an epoch is
    ``perm[b * G:(b + 1) * G]`` (G = batch size x processes), and process r takes its
    r-th slice. The composition of every global batch therefore does not depend on
    the number of processes, and ``start_batch`` resumes mid-epoch."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int):
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def __iter__(self):
        perm = np.random.default_rng([self.seed, self.epoch, 3]).permutation(self.n)
        g = self.batch_size * self.world
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = perm[b * g:(b + 1) * g]
            yield [int(i) for i in chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch
