"""bf16 extraction: close to fp32, recorded in the output, and bf16 inputs from the workers lose nothing."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import run_cli

import socialfeat
from socialfeat.encoder import BatchEncoder, resolve_precision
from socialfeat.models import load_model
from socialfeat.pipeline import ClipItem
from socialfeat.store import read_attrs


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_run_is_close_to_fp32_and_recorded(corpus, tiny_ft_ckpt, tmp_path):
    outs = {}
    for precision in ("fp32", "bf16"):
        outs[precision] = tmp_path / f"{precision}.h5"
        run_cli("extract", corpus["talk"], "-o", outs[precision], "--weights", tiny_ft_ckpt, "--precision",
                precision, "--no-progress", "--workers", "1")
        assert json.loads(read_attrs(outs[precision])["settings"])["precision"] == precision
    full = socialfeat.load_features(outs["fp32"], embeddings="all")
    half = socialfeat.load_features(outs["bf16"], embeddings="all")
    assert len(full) == len(half) == 5
    for kind in ("joint", "audio", "visual"):
        cols = [c for c in full.columns if c.startswith(f"{kind}_")]
        a, b = full[cols].to_numpy(np.float64), half[cols].to_numpy(np.float64)
        assert not np.array_equal(a, b)  # bf16 really ran
        assert _cosine(a, b).min() >= 0.999, kind
    probs = [c for c in full.columns if c.startswith("emotion_")]
    np.testing.assert_allclose(full[probs].to_numpy(), half[probs].to_numpy(), atol=0.02)


def test_bf16_inputs_from_workers_give_the_same_numbers(tiny_ft_ckpt):
    """Under bf16 autocast the patch embeddings round their inputs to bf16 anyway, so
    rounding them in the workers (half the bytes to move) must not change any value."""
    model = load_model(tiny_ft_ckpt).eval()
    kw = model.info.model_kwargs
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(3, kw["audio_length"], 128, generator=g)
    video = torch.randn(3, 3, kw["img_size"], kw["img_size"], kw["n_frame"], generator=g)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        enc = BatchEncoder(model, torch.device("cpu"), batch_size=8, tasks=[], precision="bf16")
        for i in range(3):
            enc.add(ClipItem(0, {"i": i}, audio[i].to(dtype), video[i].to(dtype)))
        results.append(enc.flush())
    for (_, a), (_, b) in zip(*results):
        for kind in ("joint", "audio", "visual"):
            assert np.array_equal(a[kind], b[kind])


def test_precision_auto_is_exact_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
