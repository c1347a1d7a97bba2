"""Model inputs from decoded media, exactly as the released weights were trained.

Audio: 16 kHz mono waveform -> Kaldi log-mel fbank (128 bins, 25 ms Hanning
window, 10 ms shift) -> zero-pad/crop to the model's frame count -> normalise
with the training set's statistics. Frames: RGB uint8 -> the family's own
image transform. Which numbers apply is data (``PreprocessSpec``), stored with
every model and checkpoint so inputs can never drift from the weights.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from PIL import Image

from socialfeat.architectures import get_arch_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Kaldi fbank arguments of both reference dataloaders (``_wav2fbank``); the rest are
# Kaldi defaults (25 ms frames, pre-emphasis 0.97, snip_edges, power spectrum, log).
KALDI_FBANK_KWARGS = dict(htk_compat=True, use_energy=False, window_type="hanning",
                          dither=0.0, frame_shift=10)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a time window of a video into model inputs.

    frame_transform: 'center-crop' (CAV-MAE: shorter side to image_size, bicubic,
    centre crop, RGB) or 'squash-bgr' (Social-MAE: resize to image_size x
    image_size, bicubic without antialias, channels in BGR order, as the
    released weights saw them through OpenCV).
    Frame k of a clip [start, start + d) is sampled at
    ``start + (k + frame_offset) * d / num_frames``.
    """

    family: str
    clip_seconds: float
    num_frames: int
    frame_offset: float
    target_length: int
    fbank_mean: float
    fbank_std: float
    frame_transform: str
    sample_rate: int = 16000
    num_mel_bins: int = 128
    image_size: int = 224
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("image_mean", "image_std"):
            if key in d:
                d[key] = tuple(float(x) for x in d[key])
        return cls(**d)

    def frame_times(self, start: float, duration: float) -> np.ndarray:
        """Timestamps (s) of the frames a clip samples."""
        k = np.arange(self.num_frames, dtype=np.float64)
        return start + (k + self.frame_offset) * duration / self.num_frames


def arch_spec(arch: str) -> PreprocessSpec:
    """The preprocessing recipe of an architecture (``model_configs/<arch>.json``)."""
    return PreprocessSpec.from_dict(get_arch_config(arch)["preprocess"])


# The two released preprocessing recipes (clip length can be changed per run).
CAV_MAE_SPEC = arch_spec("cav-mae")
SOCIAL_MAE_SPEC = arch_spec("social-mae")
FAMILY_SPECS = {"cav-mae": CAV_MAE_SPEC, "social-mae": SOCIAL_MAE_SPEC}


def resolve_spec(model: Any) -> PreprocessSpec:
    """Accept a spec, an architecture name ('social-mae', 'cav-mae', 'social-mae-tiny' ...),
    or anything carrying ``.preprocess`` (a model, a registry entry)."""
    if isinstance(model, PreprocessSpec):
        return model
    if isinstance(model, str):
        return FAMILY_SPECS[model] if model in FAMILY_SPECS else arch_spec(model)
    spec = getattr(model, "preprocess", None)
    if isinstance(spec, PreprocessSpec):
        return spec
    raise TypeError(f"cannot derive a preprocessing spec from {type(model).__name__}")


def to_mono_16k(waveform: torch.Tensor, sample_rate: int, target_rate: int = 16000) -> torch.Tensor:
    """(C, N) or (N,) float -> (1, N') at ``target_rate``, FIRST channel (as Kaldi's
    fbank reads a multi-channel file in the reference dataloaders)."""
    wav = torch.as_tensor(waveform, dtype=torch.float32)
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    wav = wav[:1]
    if sample_rate != target_rate:
        wav = torchaudio.functional.resample(wav, sample_rate, target_rate)
    return wav


def fbank(waveform: torch.Tensor, sample_rate: int, model: Any = "social-mae",
          normalize: bool = True) -> torch.Tensor:
    """Log-mel fbank input of the model, (target_length, 128) float32.

    Mean removal, Kaldi fbank, zero-pad at the end or crop to ``target_length``,
    then ``(x - mean) / std`` with the pretraining set's statistics (note: /std,
    not /(2*std) as in AST).
    """
    spec = resolve_spec(model)
    wav = to_mono_16k(waveform, sample_rate, spec.sample_rate)
    wav = wav - wav.mean()
    min_samples = int(spec.sample_rate * 0.025)  # one 25 ms Kaldi frame
    if wav.shape[1] >= min_samples:
        feats = torchaudio.compliance.kaldi.fbank(
            wav, sample_frequency=spec.sample_rate, num_mel_bins=spec.num_mel_bins, **KALDI_FBANK_KWARGS)
    else:
        feats = torch.zeros(0, spec.num_mel_bins)
    n = feats.shape[0]
    if n < spec.target_length:
        feats = F.pad(feats, (0, 0, 0, spec.target_length - n))
    else:
        feats = feats[: spec.target_length]
    if normalize:
        feats = (feats - spec.fbank_mean) / spec.fbank_std
    return feats


def frames_tensor(rgb: np.ndarray | torch.Tensor, model: Any = "social-mae") -> torch.Tensor:
    """RGB uint8 frames (N, H, W, 3) -> (N, 3, S, S) float32, per the model's transform.

    A torch tensor is transformed on its own device (extraction on a GPU resizes there,
    so that the decoding workers only decode); CAV-MAE's PIL transform runs on the CPU.
    """
    spec = resolve_spec(model)
    if not isinstance(rgb, torch.Tensor):
        rgb = np.asarray(rgb)
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"expected RGB uint8 frames (N, H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}")
    if spec.frame_transform == "squash-bgr":
        x = _float_frames(rgb)
        if x.shape[-2:] != (spec.image_size, spec.image_size):
            x = F.interpolate(x, size=(spec.image_size, spec.image_size), mode="bicubic",
                              align_corners=False, antialias=False)
        x = x[:, [2, 1, 0]]  # RGB -> BGR; resizing is per channel, so flipping after it is exact and cheaper
    elif spec.frame_transform == "center-crop":
        frames = rgb.cpu().numpy() if isinstance(rgb, torch.Tensor) else rgb
        x = torch.stack([_resize_short_center_crop(f, spec.image_size) for f in frames])
    else:
        raise ValueError(f"unknown frame_transform {spec.frame_transform!r}")
    mean = torch.tensor(spec.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.image_std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


_frame_buffer = threading.local()


def _float_frames(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1], the reference's ToTensor values.

    On the CPU it is written into a float buffer kept per thread for the last frame
    shape: a fresh full-resolution float image per frame costs more in page faults
    than the conversion itself (1.2-1.7x slower). The caller must not keep the
    result; every use here resizes it (or copies it) at once.
    """
    if isinstance(rgb, np.ndarray) and not rgb.flags.writeable:  # (a face crop of a frame: torch warns on
        rgb = rgb.copy()  # a read-only array on every clip, though it is only read)
    src = (rgb if isinstance(rgb, torch.Tensor) else torch.from_numpy(rgb)).permute(0, 3, 1, 2)
    if src.device.type != "cpu":
        return src.float().contiguous().div_(255.0)
    buf = getattr(_frame_buffer, "tensor", None)
    if buf is None or buf.shape != src.shape:
        buf = _frame_buffer.tensor = torch.empty(src.shape, dtype=torch.float32)
    return buf.copy_(src).div_(255.0)


def _resize_short_center_crop(rgb: np.ndarray, size: int) -> torch.Tensor:
    """PIL bicubic resize of the shorter side to ``size`` and centre crop, as
    torchvision's Resize(size) + CenterCrop(size) on a PIL image; -> (3, size, size) in [0, 1]."""
    img = Image.fromarray(rgb)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def video_input(frames: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Stack one clip's transformed frames (F, 3, S, S) into the model's layout:
    CAV-MAE (3, S, S) (single frame), Social-MAE (3, S, S, F) with time last."""
    if spec.family == "cav-mae":
        return frames[0]
    return frames.permute(1, 2, 3, 0).contiguous()
