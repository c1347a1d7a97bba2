"""The model call of extract (socialfeat/model_call.py) and the patch embeddings as matrix products."""

from __future__ import annotations

import copy
import functools
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_model_close

from socialfeat.encoder import BatchEncoder, prepare_models
from socialfeat.heads import outputs_to_values
from socialfeat.model_call import ModelCall
from socialfeat.models import create_model
from socialfeat.models.layers import PatchEmbed, PatchEmbed3D
from socialfeat.pipeline import ClipItem
from socialfeat.store import read_attrs

CPU = torch.device("cpu")
KINDS = ("joint", "audio", "visual")


def _inputs(model, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    kw = model.info.model_kwargs
    g = torch.Generator().manual_seed(seed)
    vshape = (3, kw["img_size"], kw["img_size"]) + ((kw["n_frame"],) if "n_frame" in kw else ())
    return torch.randn(n, kw["audio_length"], 128, generator=g), torch.randn(n, *vshape, generator=g)


@pytest.fixture(scope="module", params=["social-mae-tiny", "cav-mae-tiny"])
def tiny(request):
    torch.manual_seed(0)
    return create_model(request.param).eval()


@pytest.mark.parametrize("size", [(32, 48), (35, 50)])  # the second leaves pixels that fill no patch
def test_patch_embed_2d_is_its_conv(size):
    torch.manual_seed(0)
    pe = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=24).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    conv = pe.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(pe(x), conv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [(32, 32, 8), (33, 40, 9)])
def test_patch_embed_3d_is_its_conv(size):
    torch.manual_seed(0)
    pe = PatchEmbed3D(img_size=32, patch_size=8, in_chans=3, embed_dim=24, n_frames=8, t_stride=2).double()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    conv = pe.proj(x).flatten(2).transpose(1, 2)  # tokens (h, w, t), as the released weights expect
    torch.testing.assert_close(pe(x), conv, rtol=1e-12, atol=1e-12)


def test_patch_embed_keeps_the_checkpoint_layout():
    pe = PatchEmbed3D(img_size=32, patch_size=8, in_chans=3, embed_dim=24)
    assert {k: tuple(v.shape) for k, v in pe.state_dict().items()} == {"proj.weight": (24, 3, 8, 8, 2),
                                                                        "proj.bias": (24,)}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_padded_batches_give_the_unpadded_outputs(tiny, precision):
    model = copy.deepcopy(tiny)
    prepare_models([model], precision)
    audio, video = _inputs(model, 3)
    plain = ModelCall(model, CPU, precision, batch_size=8)(audio, video)
    padded = ModelCall(model, CPU, precision, batch_size=8, pad=True)(audio, video)
    no_audio = ModelCall(model, CPU, precision, batch_size=8, pad=True)(None, video)
    for kind in KINDS:
        assert getattr(padded, kind).shape == (3, model.norm.normalized_shape[0])
        _same(getattr(padded, kind), getattr(plain, kind), precision, kind)
    assert no_audio.joint is None and no_audio.audio is None
    _same(no_audio.visual, plain.visual, precision, "visual without audio")


def _same(ours: torch.Tensor, ref: torch.Tensor, precision: str, what: str) -> None:
    """fp32: rows do not interact, padding changes nothing but float rounding. int8 quantizes
    activations per tensor, i.e. per batch, so the padding rows move the scale like any other
    batch composition would: within int8's own error (cosine >= 0.999 to fp32)."""
    if precision == "fp32":
        assert_model_close(ours, ref, what)
    else:
        assert F.cosine_similarity(ours, ref).min() >= 0.999, what


def test_batches_larger_than_the_batch_size_run_in_chunks(tiny):
    audio, video = _inputs(tiny, 5)
    whole = ModelCall(tiny, CPU, "fp32", batch_size=8)(audio, video)
    chunks = ModelCall(tiny, CPU, "fp32", batch_size=2, pad=True)(audio, video)
    for kind in KINDS:
        assert_model_close(getattr(chunks, kind), getattr(whole, kind), kind)


def test_bf16_weights_copy_is_close_and_leaves_the_model_alone(tiny):
    audio, video = _inputs(tiny, 3)
    full = ModelCall(tiny, CPU, "fp32", batch_size=4)(audio, video)
    call = ModelCall(tiny, CPU, "bf16", batch_size=4, bf16_weights=True)
    half = call(audio, video)
    assert call.bf16_weights and not call.autocast
    assert next(tiny.parameters()).dtype == torch.float32  # the caller's model is still fp32
    assert ModelCall(tiny, CPU, "bf16", batch_size=4).autocast  # CPU default: autocast
    for kind in KINDS:
        assert getattr(half, kind).dtype == torch.float32
        assert F.cosine_similarity(getattr(half, kind), getattr(full, kind)).min() >= 0.999


def test_batch_encoder_goes_through_the_model_call(tiny_ft_ckpt):
    """Task heads still get fp32 embeddings and the own head's logits (reused from the pass)."""
    from socialfeat.encoder import build_predictors
    from socialfeat.models import load_model

    model = load_model(tiny_ft_ckpt).eval()
    audio, video = _inputs(model, 3)
    enc = BatchEncoder(model, CPU, 2, build_predictors(model, [], CPU), precision="fp32")
    assert isinstance(enc.call, ModelCall)
    rows = [enc.add(ClipItem(0, {"i": i}, audio[i], video[i])) for i in range(3)] + [enc.flush()]
    rows = [r for batch in rows for r in batch]
    direct = model.encode(audio, video)
    probs = outputs_to_values(direct.logits, model.info.task)
    for i, (_, vecs) in enumerate(rows):
        np.testing.assert_allclose(vecs["joint"], direct.joint[i].detach().numpy(), rtol=1e-4, atol=1e-5)
        name = [k for k in vecs if k not in ("joint", "audio", "visual")][0]
        np.testing.assert_allclose(vecs[name], probs[i].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_compiled_call_matches_eager_and_the_last_batch_does_not_recompile(monkeypatch):
    """Recompiling is decided by dynamo's guards, whatever the backend; a partial batch
    padded to the batch size must pass them (shape, dtype, and being an inference tensor).
    Dynamo's 'eager' backend captures and guards without generating code (seconds; inductor
    takes 25-90 s on 2 cores, too long for the suite: the GPU benchmark compiles with it)."""
    backend = "eager"
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch.manual_seed(0)
    model = create_model("social-mae-tiny").eval()
    audio, video = _inputs(model, 5)
    torch._dynamo.reset()
    counters.clear()
    call = ModelCall(model, CPU, "fp32", batch_size=4, compile=True)
    first = call(audio[:4], video[:4])  # inputs made outside inference mode, as a library user might
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():  # inputs made inside it, as BatchEncoder does
        last = call(audio[4:].clone(), video[4:].clone())  # a partial batch: padded to 4, same graph
    assert call.compiled, "compile fell back to eager"
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs
    eager = model.encode(audio, video)
    for kind in KINDS:
        got = torch.cat([getattr(first, kind), getattr(last, kind)])
        assert_model_close(got, getattr(eager, kind).detach(), kind)
    torch._dynamo.reset()


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=broken_backend))
    torch.manual_seed(0)
    model = create_model("social-mae-tiny").eval()
    audio, video = _inputs(model, 2)
    call = ModelCall(model, CPU, "fp32", batch_size=2, compile=True)
    with caplog.at_level(logging.WARNING, logger="socialfeat.model_call"), torch.inference_mode():
        out = [call(audio, video) for _ in range(2)]
    assert not call.compiled
    assert len([r for r in caplog.records if "torch.compile failed" in r.message]) == 1
    assert_model_close(out[1].joint, model.encode(audio, video).joint.detach(), "joint")
    torch._dynamo.reset()


def test_extract_compile_is_ignored_on_the_cpu_with_a_warning(corpus, tiny_ckpt, tmp_path, caplog):
    from socialfeat.extract import extract

    with caplog.at_level(logging.WARNING, logger="socialfeat.extract"):
        summary = extract([corpus["talk"]], tmp_path / "out.h5", weights=tiny_ckpt, device="cpu", workers=0,
                          progress=False, compile_model=True)
    assert summary.n_clips > 0
    assert any("--compile: ignored" in r.message for r in caplog.records)
    assert json.loads(read_attrs(tmp_path / "out.h5")["settings"])["compile"] is False  # provenance says so
