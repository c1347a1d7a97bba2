"""Model inputs equal the reference dataloaders' (fixtures) and behave on odd audio."""

from __future__ import annotations

import wave
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from socialfeat import fbank, frame_tensor, frames_tensor
from socialfeat.preprocess import CAV_MAE_SPEC, SOCIAL_MAE_SPEC, PreprocessSpec, resolve_spec

from conftest import FIXTURES

CASES = [("cavmae_shared.pt", CAV_MAE_SPEC, "image_tensor"),
         ("socialmae_shared.pt", SOCIAL_MAE_SPEC, "frame_tensor_from_bgr")]


def read_wav(path):
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return torch.from_numpy(data.astype(np.float32) / 32768.0)[None], w.getframerate()


@pytest.mark.parametrize("fname,spec,image_key", CASES)
def test_fbank_equals_reference(fname, spec, image_key):
    d = torch.load(FIXTURES / fname, weights_only=False)
    wav, sr = read_wav(FIXTURES / d["wav_file"])
    spec = replace(spec, target_length=d["fbank_target_length"])
    assert spec.fbank_mean == d["fbank_norm_mean"] and spec.fbank_std == d["fbank_norm_std"]
    torch.testing.assert_close(fbank(wav, sr, spec, normalize=False), d["fbank_raw"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fbank(wav, sr, spec), d["fbank_normalized"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fname,spec,image_key", CASES)
def test_frame_transform_equals_reference(fname, spec, image_key):
    d = torch.load(FIXTURES / fname, weights_only=False)
    rgb = np.array(Image.open(FIXTURES / d["png_file"]).convert("RGB"))
    torch.testing.assert_close(frame_tensor(rgb, spec), d[image_key], atol=1e-5, rtol=0)


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
