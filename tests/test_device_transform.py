"""Frames resized where the model runs (the GPU default) give the numbers of frames resized in the workers."""

from __future__ import annotations

import numpy as np
import torch

import socialfeat
from socialfeat import pipeline
from socialfeat.extract import extract
from socialfeat.models import load_model
from socialfeat.pipeline import ClipItem, PlanSettings, video_items
from socialfeat.walk import VideoRef


def test_raw_frames_travel_as_decoded_uint8(corpus, tiny_ckpt, monkeypatch):
    spec = load_model(tiny_ckpt).info.preprocess
    ref = VideoRef(corpus["talk"], "talk.mp4")
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan", raw_frames=True)
    items = [it for it in video_items(0, ref, spec, plan, None) if isinstance(it, ClipItem)]
    assert items and all(it.video.dtype == torch.uint8 and it.video.shape == (spec.num_frames, 240, 320, 3)
                         for it in items)
    monkeypatch.setattr(pipeline, "RAW_FRAMES_MAX_PIXELS", 320 * 240 - 1)  # too large now: transformed here
    items = [it for it in video_items(0, ref, spec, plan, None) if isinstance(it, ClipItem)]
    layout = (3, spec.image_size, spec.image_size, spec.num_frames)
    assert all(it.video.dtype == torch.float32 and it.video.shape == layout for it in items)


def test_device_transform_equals_worker_transform(corpus, tiny_ckpt, tmp_path):
    outs = {}
    for on_device in (False, True):
        outs[on_device] = tmp_path / f"dev{on_device}.h5"
        extract([corpus["root"]], outs[on_device], weights=tiny_ckpt, workers=1, progress=False,
                frames_on_device=on_device, include=("*.mp4", "*.mkv"))
    a = socialfeat.load_features(outs[False], embeddings="all")
    b = socialfeat.load_features(outs[True], embeddings="all")
    assert len(a) == len(b) > 10 and list(a.path) == list(b.path)
    assert {"rotated90.mp4", "vfr.mp4", "noaudio.mp4"} <= set(a.path)  # rotation, variable frame rate
    cols = [c for c in a.columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-5, rtol=0, equal_nan=True)


def test_frame_size_change_inside_a_clip_is_transformed_in_the_worker():
    """Streams can change resolution; decoded frames of two sizes cannot travel as one array."""
    from socialfeat.model_inputs import build_clip_inputs
    from socialfeat.preprocess import SOCIAL_MAE_SPEC, frames_tensor

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240 if k < 4 else 360, 320, 3), dtype=np.uint8) for k in range(8)]
    raw = build_clip_inputs(SOCIAL_MAE_SPEC, 0.0, 4.0, 4.0, [(k / 2, k / 2, torch.from_numpy(f)) for k, f in enumerate(frames)],
                   None)
    done = build_clip_inputs(SOCIAL_MAE_SPEC, 0.0, 4.0, 4.0,
                    [(k / 2, k / 2, frames_tensor(f[None], SOCIAL_MAE_SPEC)[0]) for k, f in enumerate(frames)], None)
    assert raw.video.dtype == torch.float32 and torch.equal(raw.video, done.video)


def test_the_cpu_encoder_copies_lent_clips_and_keeps_few_spare_tensors(tiny_ckpt):
    """On the CPU the encoder copies each clip at once (the worker writes its slot again when the
    next item is asked for) into tensors it reuses; frames of many sizes do not pile up spares."""
    from socialfeat.encoder import SPARE_SHAPES, BatchEncoder

    net = load_model(tiny_ckpt)
    spec = net.info.preprocess
    encoder = BatchEncoder(net, torch.device("cpu"), batch_size=2, tasks=[])
    audio = torch.randn(spec.target_length, spec.num_mel_bins)
    sizes = [(120 + 8 * i, 160 + 8 * i) for i in range(SPARE_SHAPES + 3)]
    expected, got = [], []
    for i, (h, w) in enumerate(sizes * 2):
        slot = torch.randint(0, 255, (spec.num_frames, h, w, 3), dtype=torch.uint8)  # stands for a worker's slot
        item = ClipItem(0, {"clip_index": i}, audio.clone(), slot)
        expected.append(encoder.encode([ClipItem(0, {}, audio.clone(), slot.clone())])[0][1]["visual"])
        done = encoder.add(item)
        slot.zero_()  # the worker writes the slot again
        got += [vecs["visual"] for _, vecs in done]
        assert len(encoder.spare) <= SPARE_SHAPES
    got += [vecs["visual"] for _, vecs in encoder.flush()]
    assert len(got) == len(expected)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=1e-5)
