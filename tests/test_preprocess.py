"""Model inputs equal the reference dataloaders' (fixtures) and behave on odd audio."""

from __future__ import annotations

import wave
from dataclasses import replace

import numpy as np
import pytest
import torch
import torchaudio
from conftest import FIXTURES
from PIL import Image
from tolerance import fbank_error_ratio

from socialfeat import fbank, frames_tensor
from socialfeat.architectures import get_arch_config
from socialfeat.model_inputs import pad_frames
from socialfeat.preprocess import (
    CAV_MAE_SPEC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    KALDI_FBANK_KWARGS,
    SOCIAL_MAE_SPEC,
    PreprocessSpec,
    resolve_spec,
)

# Every fixture file of a family (the shared set, and any further set dropped into tests/fixtures).
SPECS = {"cav": (CAV_MAE_SPEC, "image_tensor"), "social": (SOCIAL_MAE_SPEC, "frame_tensor_from_bgr")}
CASES = [(path.name, *SPECS[family]) for family, pattern in (("cav", "cavmae_*.pt"), ("social", "socialmae_*.pt"))
         for path in sorted(FIXTURES.glob(pattern))]


def read_wav(path):
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return torch.from_numpy(data.astype(np.float32) / 32768.0)[None], w.getframerate()


def kaldi_variant(wav: torch.Tensor, target_length: int, **changes) -> torch.Tensor:
    """The reference recipe with some arguments changed (or run in float64), padded/cropped."""
    kwargs = {**KALDI_FBANK_KWARGS, **changes}
    torch.manual_seed(0)  # dither draws noise
    out = torchaudio.compliance.kaldi.fbank(wav - wav.mean(), sample_frequency=16000, num_mel_bins=128, **kwargs)
    out = torch.nn.functional.pad(out, (0, 0, 0, max(0, target_length - len(out))))[:target_length]
    return out.float()


@pytest.mark.parametrize("fname,spec,image_key", CASES)
def test_fbank_equals_reference(fname, spec, image_key):
    """Within the rounding of float32 kernels on any x86 CPU (tolerance.fbank_tolerance)."""
    d = torch.load(FIXTURES / fname, weights_only=False)
    wav, sr = read_wav(FIXTURES / d["wav_file"])
    spec = replace(spec, target_length=d["fbank_target_length"])
    assert spec.fbank_mean == d["fbank_norm_mean"] and spec.fbank_std == d["fbank_norm_std"]
    assert fbank_error_ratio(fbank(wav, sr, spec, normalize=False), d["fbank_raw"]) <= 1
    assert fbank_error_ratio(fbank(wav, sr, spec), d["fbank_normalized"], std=spec.fbank_std) <= 1


@pytest.mark.parametrize("fname,spec,image_key", CASES)
def test_fbank_tolerance_admits_other_kernels_and_refuses_wrong_recipes(fname, spec, image_key):
    """The tolerance is sharp: float64 (other kernels' rounding) passes with a wide margin,
    a wrong window, dither, pre-emphasis, mel range, frame, DC removal or normalisation fails."""
    d = torch.load(FIXTURES / fname, weights_only=False)
    wav, _ = read_wav(FIXTURES / d["wav_file"])
    n, ref = d["fbank_target_length"], d["fbank_raw"]
    assert fbank_error_ratio(kaldi_variant(wav.double(), n), ref) < 0.25
    wrong = [dict(window_type="hamming"), dict(window_type="povey"), dict(dither=1e-5),
             dict(preemphasis_coefficient=0.95), dict(preemphasis_coefficient=0.0), dict(low_freq=0.0),
             dict(high_freq=-400.0), dict(frame_length=20.0), dict(round_to_power_of_two=False),
             dict(remove_dc_offset=False), dict(use_power=False), dict(snip_edges=False)]
    for changes in wrong:
        assert fbank_error_ratio(kaldi_variant(wav, n, **changes), ref) > 2, changes
    std, mean = d["fbank_norm_std"], d["fbank_norm_mean"]
    assert fbank_error_ratio((ref - mean) / (2 * std), d["fbank_normalized"], std=std) > 2  # AST's /(2*std)
    assert fbank_error_ratio((ref - mean) / std, d["fbank_normalized"], std=std) <= 1


@pytest.mark.parametrize("fname,spec,image_key", CASES)
def test_frame_transform_equals_reference(fname, spec, image_key):
    """PIL's bicubic works on integers (exact anywhere); torch's float bicubic may differ by an
    FMA's rounding (< 1e-6 here), so 1e-5 on normalised values (range about +-2.6) is about 40
    float32 steps, while antialiasing, bilinear resizing or RGB order differ by > 1e-2."""
    d = torch.load(FIXTURES / fname, weights_only=False)
    rgb = np.array(Image.open(FIXTURES / d["png_file"]).convert("RGB"))
    torch.testing.assert_close(frames_tensor(rgb[None], spec)[0], d[image_key], atol=1e-5, rtol=0)


def test_frame_transform_tolerance_refuses_wrong_resizes():
    d = torch.load(FIXTURES / "socialmae_shared.pt", weights_only=False)
    rgb = np.array(Image.open(FIXTURES / d["png_file"]).convert("RGB"))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for mode, antialias, order in [("bicubic", True, [2, 1, 0]), ("bilinear", False, [2, 1, 0]),
                                   ("bicubic", False, [0, 1, 2])]:
        y = torch.nn.functional.interpolate(x, size=(224, 224), mode=mode, antialias=antialias)[0, order]
        assert ((y - mean) / std - d["frame_tensor_from_bgr"]).abs().max() > 1e-2, (mode, antialias, order)


@pytest.mark.parametrize("height,width", [(224, 227), (224, 229), (227, 224), (229, 224)])
def test_cav_mae_centre_crop_offset_is_torchvisions(height, width):
    """CenterCrop starts at int(round(margin / 2)) (Python's round: halves to even), here 2 for
    margins 3 and 5 where floor or ceil give 1 or 3. The fixture's margin (298 - 224 = 74) is
    even and cannot tell. The short side is already 224, so no resize: the values are exact."""
    long = max(height, width)
    ramp = np.arange(long, dtype=np.uint8)  # each pixel's index along the long side
    rgb = np.broadcast_to((ramp[None, :] if width > height else ramp[:, None])[..., None], (height, width, 3))
    x = frames_tensor(np.ascontiguousarray(rgb)[None], "cav-mae")[0]
    left = 2
    assert left == int(round((long - 224) / 2.0))
    expected = torch.from_numpy(ramp[left:left + 224].astype(np.float32) / 255)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1), torch.tensor(IMAGENET_STD).view(3, 1)
    along = x[:, 0, :] if width > height else x[:, :, 0]
    torch.testing.assert_close(along, (expected - mean) / std, atol=1e-6, rtol=0)


def test_short_clips_tile_their_frames_like_reference():
    """Social-MAE's MyDataset: ``imgs.repeat(..., int(8 // T + 1))[..., :8]``, the sequence tiled
    (not its last frame held, not each frame repeated in place)."""
    assert pad_frames(list("abc"), 8) == (list("abcabcab"), 5)
    assert pad_frames(list("a"), 8) == (list("a" * 8), 7)
    assert pad_frames(list("abcdefghij"), 8) == (list("abcdefgh"), 0)


def test_recipes_use_the_reference_lengths_and_frame_counts():
    """The numbers test_fbank_equals_reference replaces by the fixture's (it runs the shared set's
    256-frame CAV-MAE crop branch) are the references' own."""
    d = torch.load(FIXTURES / "socialmae_shared.pt", weights_only=False)
    # Social-MAE's wav2fbank hard-codes 1024 frames; main_*.py: n_frame = 2 fps * 4 s
    assert SOCIAL_MAE_SPEC.target_length == d["fbank_target_length"] == 1024
    assert SOCIAL_MAE_SPEC.num_frames == d["config_finetune"]["n_frame"] == 8
    assert SOCIAL_MAE_SPEC.clip_seconds == 4.0 and SOCIAL_MAE_SPEC.frame_offset == 0.0
    # CAV-MAE's egs scripts: target_length 1024 (10.24 s of 10-s clips), one frame from the middle
    assert CAV_MAE_SPEC.target_length == 1024 and CAV_MAE_SPEC.num_frames == 1
    for arch, spec in (("cav-mae", CAV_MAE_SPEC), ("social-mae", SOCIAL_MAE_SPEC)):
        model = get_arch_config(arch)["model"]
        assert model["audio_length"] == spec.target_length
        assert model.get("n_frame", 1) == spec.num_frames


def test_social_mae_frames_are_bgr():
    """The released Social-MAE weights saw OpenCV's BGR order with RGB statistics."""
    rgb = np.zeros((1, 224, 224, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = frames_tensor(rgb, "social-mae")[0]
    mean, std = SOCIAL_MAE_SPEC.image_mean, SOCIAL_MAE_SPEC.image_std
    assert x[2].mean().item() == pytest.approx((1 - mean[2]) / std[2], abs=1e-5)  # red lands in channel 2
    assert x[0].mean().item() == pytest.approx((0 - mean[0]) / std[0], abs=1e-5)


def test_first_channel_and_resampling():
    t = torch.arange(44100 * 2) / 44100
    left = torch.sin(2 * torch.pi * 440 * t)
    stereo = torch.stack([left, torch.randn_like(left)])
    a = fbank(stereo, 44100, "social-mae")
    b = fbank(left, 44100, "social-mae")
    assert torch.equal(a, b)  # only the first channel counts
    sixteen = fbank(torch.sin(2 * torch.pi * 440 * torch.arange(32000) / 16000), 16000, "social-mae")
    # resampled 44.1 kHz ~ native 16 kHz where the tone's energy is (elsewhere it is the noise floor)
    peak = sixteen[:190].mean(0).argmax()
    assert a[:190].mean(0).argmax() == peak
    assert (a[:190, peak - 1:peak + 2] - sixteen[:190, peak - 1:peak + 2]).abs().max() < 0.01


def test_short_audio_is_zero_padded_like_reference():
    out = fbank(torch.zeros(100), 16000, "social-mae", normalize=False)
    assert out.shape == (1024, 128) and torch.count_nonzero(out) == 0


def test_spec_round_trip_and_errors():
    assert PreprocessSpec.from_dict(SOCIAL_MAE_SPEC.to_dict()) == SOCIAL_MAE_SPEC
    assert resolve_spec("cav-mae") is CAV_MAE_SPEC
    np.testing.assert_allclose(SOCIAL_MAE_SPEC.frame_times(10.0, 4.0), 10 + 0.5 * np.arange(8))
    np.testing.assert_allclose(CAV_MAE_SPEC.frame_times(0.0, 10.0), [5.0])
    with pytest.raises(ValueError, match="RGB uint8"):
        frames_tensor(np.zeros((2, 10, 10, 3), np.float32), "cav-mae")
