"""The CPU fast path: int8 linear layers close to fp32 through the real CLI, 'fast' choosing
bf16 only where the CPU has AMX, joint-only runs skipping the other passes, wrong settings refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

import socialfeat
from socialfeat.encoder import BatchEncoder, resolve_embeddings, resolve_precision
from socialfeat.errors import UsageError
from socialfeat.models import create_model, fast, load_model
from socialfeat.models.fast import Int8Linear, is_quantized, quantize_linears
from socialfeat.pipeline import ClipItem
from socialfeat.store import read_attrs

KINDS = ("joint", "audio", "visual")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _columns(df, kind: str) -> np.ndarray:
    return df[[c for c in df.columns if c.startswith(f"{kind}_")]].to_numpy(np.float64)


@pytest.fixture(scope="module")
def runs(corpus, tiny_ckpt, tmp_path_factory):
    """One clip-rich video through the CLI three ways: fp32, int8, fp32 joint only."""
    tmp = tmp_path_factory.mktemp("fast")
    settings = {"fp32": ["--precision", "fp32"], "int8": ["--precision", "int8"],
                "joint": ["--precision", "fp32", "--embeddings", "joint"]}
    outs = {}
    for name, extra in settings.items():
        outs[name] = tmp / f"{name}.h5"
        run_cli("extract", corpus["talk"], "-o", outs[name], "--weights", tiny_ckpt, "--no-progress",
                "--workers", "1", *extra)
    return outs


def test_int8_run_is_close_to_fp32_and_recorded(runs):
    full = socialfeat.load_features(runs["fp32"], embeddings="all")
    fast8 = socialfeat.load_features(runs["int8"], embeddings="all")
    assert len(full) == len(fast8) >= 4
    for kind in KINDS:
        a, b = _columns(full, kind), _columns(fast8, kind)
        assert not np.array_equal(a, b), kind  # int8 really ran
        assert _cosine(a, b).min() >= 0.99, (kind, _cosine(a, b).min())
    settings = json.loads(read_attrs(runs["int8"])["settings"])
    assert settings["precision"] == "int8" and settings["int8_engine"] in fast.ENGINES


def test_joint_only_run_skips_the_other_embeddings_cleanly(runs):
    settings = json.loads(read_attrs(runs["joint"])["settings"])
    assert settings["embeddings"] == ["joint"]
    only = socialfeat.load_features(runs["joint"], embeddings="all")
    assert not [c for c in only.columns if c.startswith(("audio_", "visual_"))]
    full = socialfeat.load_features(runs["fp32"], embeddings="joint")
    np.testing.assert_array_equal(_columns(only, "joint"), _columns(full, "joint"))  # the same joint pass
    with pytest.raises(ValueError, match="computed only the joint"):
        socialfeat.load_features(runs["joint"], embeddings="audio")


@pytest.mark.parametrize("args, message", [
    (["--precision", "int9"], "Invalid value for '--precision'"),
    (["--embeddings", "joint,vision"], "embeddings must be 'all' or some of"),
])
def test_wrong_settings_fail_before_any_work(corpus, tiny_ckpt, tmp_path, args, message):
    """The CLI in this process (no second start of Python and torch): exit 2, one line, no output."""
    from click.testing import CliRunner

    from socialfeat.cli import main

    result = CliRunner().invoke(main, ["extract", str(corpus["talk"]), "-o", str(tmp_path / "x.h5"),
                                       "--weights", str(tiny_ckpt), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.h5").exists()


def test_precision_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("int8", cpu) == "int8"
    with pytest.raises(UsageError, match="CPU only"):
        resolve_precision("int8", cuda)
    assert resolve_precision("fast", cuda) == "bf16"
    for amx, expected in ((True, "bf16"), (False, "int8")):
        monkeypatch.setattr(fast, "cpu_has_amx", lambda amx=amx: amx)
        assert resolve_precision("fast", cpu) == expected
    assert resolve_precision("auto", cpu) == "fp32"  # the default stays exact
    assert resolve_embeddings("all") == KINDS and resolve_embeddings("visual, joint") == ("joint", "visual")
    with pytest.raises(UsageError):
        resolve_embeddings("")


def test_int8_linear_is_close_and_only_the_trunk_is_converted():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(3, 10, 64)
    with torch.inference_mode():
        ref, got = linear(x), Int8Linear(linear, fast.int8_engine())(x)
    assert got.shape == ref.shape and (got - ref).norm() / ref.norm() < 0.02
    model = create_model("social-mae-tiny", kind="finetune", label_names=["a", "b"])
    quantize_linears(model)
    assert is_quantized(model) and isinstance(model.blocks_u[0].mlp.fc1, Int8Linear)
    assert isinstance(model.mlp_head[1], torch.nn.Linear)  # task head stays fp32
    with torch.device("meta"):
        on_meta = create_model("social-mae-tiny")
    with pytest.raises(UsageError, match="CPU only"):
        quantize_linears(on_meta)


def test_batch_encoder_converts_task_models_and_skips_unrequested_passes(tiny_ft_ckpt):
    """The model's own head reuses the pass just made; joint-only leaves audio/visual NaN."""
    kw = load_model(tiny_ft_ckpt).info.model_kwargs
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(2, kw["audio_length"], 128, generator=g)
    video = torch.randn(2, 3, kw["img_size"], kw["img_size"], kw["n_frame"], generator=g)
    from socialfeat.encoder import build_predictors

    results = {}
    for name, precision, kinds in (("fp32", "fp32", KINDS), ("int8", "int8", ("joint",))):
        model = load_model(tiny_ft_ckpt)
        enc = BatchEncoder(model, torch.device("cpu"), 8, build_predictors(model, [], torch.device("cpu")),
                           precision, kinds)
        for i in range(2):
            enc.add(ClipItem(0, {"i": i}, audio[i], video[i]))
        results[name] = [vecs for _, vecs in enc.flush()]
        assert is_quantized(model) == (precision == "int8")
    for full, quick in zip(results["fp32"], results["int8"]):
        assert np.isnan(quick["audio"]).all() and np.isnan(quick["visual"]).all()
        assert _cosine(full["joint"][None], quick["joint"][None])[0] >= 0.99
        np.testing.assert_allclose(full["emotion"], quick["emotion"], atol=0.05)
