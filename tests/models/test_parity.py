"""Numerical parity with the published CAV-MAE and Social-MAE code (fixtures in tests/fixtures,
produced by the reference implementations; see tests/fixtures/README.md).

Float outputs are compared within float32 rounding on any x86 CPU (tests/tolerance.py: relative
RMS and max error, sized from float64 runs and wrong variants, see
``test_tolerance_admits_other_kernels_and_refuses_wrong_layers``); masks, token orders and
index permutations exactly. Every ``cavmae_*.pt`` / ``socialmae_*.pt`` in the fixtures is used.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import FIXTURES
from tolerance import MODEL_REL_RMS, assert_model_close, model_error

from socialfeat.models import CAVMAE, CAVMAEFT, SocialMAE, SocialMAEFT

CLASSES = {"cavmae": (CAVMAE, CAVMAEFT), "socialmae": (SocialMAE, SocialMAEFT)}
FIXTURE_FILES = sorted(p.name for family in CLASSES for p in FIXTURES.glob(f"{family}_*.pt"))


def weights_from_rule(keys, seed: int) -> dict[str, torch.Tensor]:
    """The fixtures' deterministic weight rule (README: sorted keys, one generator)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in sorted(keys):
        if len(shape) == 1 and "norm" in key and key.endswith(".weight"):
            sd[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.02 * torch.randn(shape, generator=g)
    return sd


def build(fname: str):
    d = torch.load(FIXTURES / fname, weights_only=False)
    pre_cls, ft_cls = CLASSES[fname.split("_")[0]]
    pre = pre_cls(**d["config_pretrain"]).eval()
    pre.load_state_dict(weights_from_rule(d["keys_pretrain"], d["weight_seed"]), strict=True)
    ft = ft_cls(**d["config_finetune"]).eval()
    ft.load_state_dict(weights_from_rule(d["keys_finetune"], d["weight_seed"]), strict=True)
    return d, pre, ft


@pytest.fixture(scope="module", params=FIXTURE_FILES)
def ref(request):
    d, pre, ft = build(request.param)
    return d["family"], d, pre, ft


def close(a, b, exact: bool = False, what: str = ""):
    """Float outputs within float32 rounding (tolerance.py); ``exact`` for masks and identities."""
    assert a.shape == b.shape, (what, a.shape, b.shape)
    if exact:
        assert torch.equal(a, b.to(a.dtype)), (what, (a.double() - b.double()).abs().max().item())
    else:
        assert_model_close(a, b, what)


def test_state_dict_keys_and_shapes_match_reference(ref):
    _, d, pre, ft = ref
    assert sorted((k, list(v.shape)) for k, v in pre.state_dict().items()) == sorted(d["keys_pretrain"])
    assert sorted((k, list(v.shape)) for k, v in ft.state_dict().items()) == sorted(d["keys_finetune"])


@torch.no_grad()
def test_pretraining_losses_and_masks(ref):
    _, d, pre, _ = ref
    torch.manual_seed(d["mask_seed"])
    out = pre(d["input_audio"], d["input_video"])
    names = ["loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "mask_a", "mask_v", "c_acc"]
    for name, value in zip(names, out):
        close(value, d[f"pretrain_{name}"], exact=name.startswith("mask"), what=name)


@torch.no_grad()
def test_masking_noise_is_drawn_as_reference(ref):
    _, d, pre, _ = ref
    torch.manual_seed(d["mask_seed"])
    noise_a = pre.masking_noise(*d["pretrain_noise_a"].shape, "cpu")
    noise_v = pre.masking_noise(*d["pretrain_noise_v"].shape, "cpu")
    # The same generator and distribution: equal up to the vectorised log/cos of torch's normal
    # sampler (identical on AVX2 and AVX-512 builds, measured 0.0 here). Masks, which follow from
    # the noise's order, are compared exactly in the other tests.
    torch.testing.assert_close(noise_a, d["pretrain_noise_a"], atol=1e-6, rtol=0)
    torch.testing.assert_close(noise_v, d["pretrain_noise_v"], atol=1e-6, rtol=0)


@torch.no_grad()
def test_encoder_and_decoder_intermediates(ref):
    family, d, pre, _ = ref
    torch.manual_seed(d["mask_seed"])
    x, mask_a, ids_a, mask_v, ids_v, ca, cv = pre.forward_encoder(d["input_audio"], d["input_video"], 0.75, 0.75)
    close(x, d["pretrain_latent"], what="latent")
    close(ca, d["pretrain_latent_c_a"], what="latent_c_a")
    close(cv, d["pretrain_latent_c_v"], what="latent_c_v")
    assert torch.equal(ids_a, d["pretrain_ids_restore_a"]) and torch.equal(ids_v, d["pretrain_ids_restore_v"])
    pred_a, pred_v = pre.forward_decoder(x, mask_a, ids_a, mask_v, ids_v)
    close(pred_a, d["pretrain_pred_a"], what="pred_a")
    if family == "cav":
        close(pred_v, d["pretrain_pred_v"], what="pred_v")
    else:
        close(pred_v[0, :196], d["pretrain_pred_v_sample0_tok0to195"], what="pred_v[0, :196]")
        # a sum of 1.2 M values: compare against the sum of their magnitudes (float32 rounding scale)
        scale = pred_v.double().abs().sum((1, 2))
        assert ((pred_v.double().sum((1, 2)) - d["pretrain_pred_v_sum_f64"]).abs() <= MODEL_REL_RMS * scale).all()


@torch.no_grad()
def test_finetuning_modes(ref):
    _, d, _, ft = ref
    for mode in ft.modes:
        close(ft(d["input_audio"], d["input_video"], mode), d[f"ft_{mode}"], what=mode)
    # manual (non-fused) attention in the reference gives the same logits within float noise
    close(ft(d["input_audio"], d["input_video"], "multimodal"), d["ft_multimodal_nonfused_attn"], what="nonfused")
    with pytest.raises(ValueError, match="mode must be one of"):
        ft(d["input_audio"], d["input_video"], "bogus")


@torch.no_grad()
def test_encode_gives_all_embeddings_in_one_pass(ref):
    _, d, _, ft = ref
    enc = ft.encode(d["input_audio"], d["input_video"], return_tokens=True)
    close(enc.logits, d["ft_multimodal"], what="logits")
    close(ft.mlp_head(enc.audio), d["ft_audioonly"], what="audio head")
    close(ft.mlp_head(enc.visual), d["ft_videoonly"], what="visual head")
    assert set(enc.tokens) == {"audio", "visual", "joint"}
    close(enc.tokens["joint"].mean(1), enc.joint, exact=True)
    audio_only = ft.encode(d["input_audio"], None)
    assert audio_only.joint is None and audio_only.logits is None
    close(audio_only.audio, enc.audio, exact=True)


@torch.no_grad()
def test_encode_tokens_are_the_reference_streams(ref):
    """``encode(return_tokens=True)`` hands out the reference's token sequences, not only their
    means: the audio and visual streams are forward_feat's (CAV-MAE fixtures), the joint stream is
    forward_encoder's unified stream (fixture-checked above) without masking, audio tokens first.
    A joint stream with the video tokens first has the same mean (the unified blocks carry no
    position), so the means alone cannot tell; the token order can."""
    family, d, pre, ft = ref
    a, v = d["input_audio"], d["input_video"]
    kinds = ("joint", "audio", "visual") if family == "cav" else ("joint",)  # (no Social-MAE fixture for these)
    enc = pre.encode(a, v, return_tokens=True, kinds=kinds)
    if family == "cav":
        close(enc.tokens["audio"], d["pretrain_forward_feat_audio"], what="audio tokens")
        close(enc.tokens["visual"], d["pretrain_forward_feat_video"], what="visual tokens")
        tokens = ft.encode(a, v, return_tokens=True).tokens
        close(tokens["audio"], d["ft_forward_feat_av_audio"], what="ft audio tokens")
        close(tokens["visual"], d["ft_forward_feat_av_video"], what="ft visual tokens")
    n = a.shape[0]

    def in_order(length):  # masking noise that keeps every token in its place
        return torch.arange(length, dtype=torch.float32).expand(n, length)

    joint = pre.forward_encoder(a, v, 0.0, 0.0, noise_a=in_order(pre.num_audio_tokens),
                                noise_v=in_order(pre.num_video_tokens))[0]
    close(enc.tokens["joint"], joint, what="joint tokens")


def test_masking_keeps_the_reference_count():
    """The reference keeps int(L * (1 - ratio)) tokens: rounded down where that is not whole (196
    tokens at ratio 0.9: 19, not 20). The fixtures' ratio 0.75 gives whole counts and cannot tell."""
    d = torch.load(FIXTURES / "cavmae_shared.pt", weights_only=False)
    pre = CAVMAE(**d["config_pretrain"])
    kept, mask, _ = pre.random_masking(torch.zeros(2, 196, 4), 0.9)
    assert kept.shape[1] == 19 and (mask.sum(1) == 196 - 19).all()


@torch.no_grad()
def test_forward_feat(ref):
    family, d, pre, ft = ref
    a, v = d["input_audio"], d["input_video"]
    if family == "cav":
        fa, fv = pre.forward_feat(a, v)
        close(fa, d["pretrain_forward_feat_audio"], what="forward_feat audio")
        close(fv, d["pretrain_forward_feat_video"], what="forward_feat video")
        ta, tv = ft.forward_feat(a, v, "av")
        close(ta, d["ft_forward_feat_av_audio"], what="ft forward_feat audio")
        close(tv, d["ft_forward_feat_av_video"], what="ft forward_feat video")
        assert d["ft_forward_feat_a_equals_av_audio"]
        close(ft.forward_feat(a, v, "a"), ta, exact=True)
    else:  # Social-MAE gains forward_feat here; it must agree with encode
        fa, fv = pre.forward_feat(a, v)
        enc = pre.encode(a, v)
        close(fa.mean(1), enc.audio, what="audio")
        close(fv.mean(1), enc.visual, what="visual")


@torch.no_grad()
def test_social_mae_tubelet_token_order():
    d = torch.load(FIXTURES / "socialmae_shared.pt", weights_only=False)
    pre = SocialMAE(**d["config_pretrain"])
    pre.load_state_dict(weights_from_rule(d["keys_pretrain"], d["weight_seed"]), strict=True)
    close(pre.patch_embed_v(d["input_video"][:1])[0, :8], d["patch_embed_v_tokens_sample0"], what="tubelets")
    # the (t, h, w) order would put other patches first
    tokens = pre.patch_embed_v(d["input_video"][:1])[0]
    wrong_order = tokens.view(14, 14, 4, -1).permute(2, 0, 1, 3).reshape(-1, tokens.shape[-1])
    assert model_error(wrong_order[:8], d["patch_embed_v_tokens_sample0"])[0] > 100 * MODEL_REL_RMS


def reference_sincos_table(variant: str, dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The references' pos_embed.py in closed form, float64; rows (h, w) row-major.
    CAV-MAE (MAE's recipe): channels [sin(w om), cos(w om), sin(h om), cos(h om)], om_i =
    10000 ** (-i / (D/4)). Social-MAE: [sin(w om), cos(w om)] in both halves, om_i = i / (D/4) / 1000."""
    q = dim // 4
    i = torch.arange(q, dtype=torch.float64)
    omega = 10000.0 ** (-i / q) if variant == "cav-mae" else i / q / 1000
    h, w = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                          indexing="ij")
    h, w = h.reshape(-1, 1) * omega, w.reshape(-1, 1) * omega
    second = h if variant == "cav-mae" else w
    return torch.cat([w.sin(), w.cos(), second.sin(), second.cos()], 1)


@pytest.mark.parametrize("fname", FIXTURE_FILES)
def test_fresh_position_tables_are_the_references(fname):
    """A model built from scratch starts from the reference's sin-cos tables (the fixtures'
    weight rule overwrites them, so only this test sees them): audio on the (8, T/16) grid, video
    on the square grid of side sqrt(tokens) (Social-MAE: 28 x 28 for 784 tubelets). Measured on
    the shared configurations: float32 rounding <= 3e-8 from the float64 closed form (atol 1e-6);
    a wrong base (1000 / 10000) or h and w swapped differ by 1.3 - 2, the Social-MAE video table
    on a (196, 4) space-time grid by 0.023 (its frequencies are small)."""
    d = torch.load(FIXTURES / fname, weights_only=False)
    pre_cls, ft_cls = CLASSES[fname.split("_")[0]]
    variant = "cav-mae" if d["family"] == "cav" else "social-mae"
    torch.manual_seed(0)
    for model in (pre_cls(**d["config_pretrain"]), ft_cls(**d["config_finetune"])):
        side = math.isqrt(model.num_video_tokens)
        assert side * side == model.num_video_tokens  # the reference's own configurations
        audio = (128 // 16, d["config_pretrain"]["audio_length"] // 16)  # (frequency, time) patches
        grids = {"pos_embed_a": audio, "pos_embed_v": (side, side),
                 "decoder_pos_embed_a": audio, "decoder_pos_embed_v": (side, side)}
        for name, grid in grids.items():
            if hasattr(model, name):
                table = getattr(model, name)[0]
                expected = reference_sincos_table(variant, table.shape[-1], *grid)
                torch.testing.assert_close(table.double(), expected, atol=1e-6, rtol=0, msg=name)


def test_social_mae_defaults_are_the_released_configuration():
    with torch.device("meta"):
        m = SocialMAEFT(label_dim=6)
    assert m.num_video_tokens == 784 and m.num_audio_tokens == 512
    assert m.patch_embed_v.proj.kernel_size == (16, 16, 2)


@torch.no_grad()
def test_bf16_autocast_keeps_embeddings(ref):
    """bf16 autocast (what extraction uses on CUDA; checked here on the CPU) stays close to fp32."""
    _, d, _, ft = ref
    a, v = d["input_audio"], d["input_video"]
    full = ft.encode(a, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = ft.encode(a, v)
    for kind in ("joint", "audio", "visual"):
        cos = torch.nn.functional.cosine_similarity(getattr(full, kind), getattr(half, kind).float(), dim=-1)
        assert cos.min() >= 0.999, (kind, cos)


@torch.no_grad()
@pytest.mark.parametrize("fname", ["cavmae_shared.pt", "socialmae_shared.pt"])
def test_tolerance_admits_other_kernels_and_refuses_wrong_layers(fname):
    """float64 (other kernels' rounding) passes with a margin of 4x; a LayerNorm eps of 1e-6
    (MAE's) or a tanh-approximated GELU, both plausible mistakes, fail."""
    d, pre, _ = build(fname)
    a, v = d["input_audio"], d["input_video"]

    def latent(model, dtype=torch.float32):
        torch.manual_seed(d["mask_seed"])
        return model.to(dtype).forward_encoder(a.to(dtype), v.to(dtype), 0.75, 0.75)[0].float()

    assert model_error(latent(pre, torch.float64), d["pretrain_latent"])[0] < MODEL_REL_RMS / 4
    pre.float()
    for name, change in [("eps", lambda m: setattr(m, "eps", 1e-6) if isinstance(m, torch.nn.LayerNorm) else None),
                         ("gelu", lambda m: setattr(m, "approximate", "tanh") if isinstance(m, torch.nn.GELU) else None)]:
        wrong = copy.deepcopy(pre)
        wrong.apply(change)
        assert model_error(latent(wrong), d["pretrain_latent"])[0] > MODEL_REL_RMS, name


@torch.no_grad()
def test_int8_linear_layers_keep_embeddings(ref):
    """The CPU fast path (int8 linear layers, models/fast.py) on the reference fixtures: every
    embedding at cosine >= 0.99 to fp32 (measured >= 0.9999 on the released size)."""
    from socialfeat.models.fast import quantize_linears

    _, d, _, ft = ref
    a, v = d["input_audio"], d["input_video"]
    full = ft.encode(a, v)
    fast = quantize_linears(copy.deepcopy(ft)).encode(a, v)
    for kind in ("joint", "audio", "visual"):
        cos = torch.nn.functional.cosine_similarity(getattr(full, kind), getattr(fast, kind), dim=-1)
        assert cos.min() >= 0.99, (kind, cos)
        assert not torch.equal(getattr(full, kind), getattr(fast, kind)), kind  # int8 really ran
