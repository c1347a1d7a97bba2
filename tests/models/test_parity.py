"""Numerical parity with the published CAV-MAE and Social-MAE code (fixtures in tests/fixtures,
produced by the reference implementations; see tests/fixtures/README.md)."""

from __future__ import annotations

import pytest
import torch

from socialfeat.models import CAVMAE, CAVMAEFT, SocialMAE, SocialMAEFT

from conftest import FIXTURES

ATOL = 1e-5
FAMILIES = {"cav": ("cavmae_shared.pt", CAVMAE, CAVMAEFT), "social": ("socialmae_shared.pt", SocialMAE, SocialMAEFT)}


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


@pytest.fixture(scope="module", params=list(FAMILIES))
def ref(request):
    fname, pre_cls, ft_cls = FAMILIES[request.param]
    d = torch.load(FIXTURES / fname, weights_only=False)
    pre = pre_cls(**d["config_pretrain"]).eval()
    pre.load_state_dict(weights_from_rule(d["keys_pretrain"], d["weight_seed"]), strict=True)
    ft = ft_cls(**d["config_finetune"]).eval()
    ft.load_state_dict(weights_from_rule(d["keys_finetune"], d["weight_seed"]), strict=True)
    return request.param, d, pre, ft


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.float(), b.float(), atol=atol, rtol=0), (a.float() - b.float()).abs().max().item()


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
        close(value, d[f"pretrain_{name}"])


@torch.no_grad()
def test_masking_noise_is_drawn_as_reference(ref):
    _, d, pre, _ = ref
    torch.manual_seed(d["mask_seed"])
    noise_a = pre.masking_noise(*d["pretrain_noise_a"].shape, "cpu")
    noise_v = pre.masking_noise(*d["pretrain_noise_v"].shape, "cpu")
    close(noise_a, d["pretrain_noise_a"], 0)
    close(noise_v, d["pretrain_noise_v"], 0)


@torch.no_grad()
def test_encoder_and_decoder_intermediates(ref):
    family, d, pre, _ = ref
    torch.manual_seed(d["mask_seed"])
    x, mask_a, ids_a, mask_v, ids_v, ca, cv = pre.forward_encoder(d["input_audio"], d["input_video"], 0.75, 0.75)
    close(x, d["pretrain_latent"])
    close(ca, d["pretrain_latent_c_a"])
    close(cv, d["pretrain_latent_c_v"])
    assert torch.equal(ids_a, d["pretrain_ids_restore_a"]) and torch.equal(ids_v, d["pretrain_ids_restore_v"])
    pred_a, pred_v = pre.forward_decoder(x, mask_a, ids_a, mask_v, ids_v)
    close(pred_a, d["pretrain_pred_a"])
    if family == "cav":
        close(pred_v, d["pretrain_pred_v"])
    else:
        close(pred_v[0, :196], d["pretrain_pred_v_sample0_tok0to195"])
        close(pred_v.double().sum((1, 2)), d["pretrain_pred_v_sum_f64"], atol=1e-2)


@torch.no_grad()
def test_finetuning_modes(ref):
    _, d, _, ft = ref
    for mode in ft.modes:
        close(ft(d["input_audio"], d["input_video"], mode), d[f"ft_{mode}"])
    # manual (non-fused) attention in the reference gives the same logits within float noise
    close(ft(d["input_audio"], d["input_video"], "multimodal"), d["ft_multimodal_nonfused_attn"])
    with pytest.raises(ValueError, match="mode must be one of"):
        ft(d["input_audio"], d["input_video"], "bogus")


@torch.no_grad()
def test_encode_gives_all_embeddings_in_one_pass(ref):
    _, d, _, ft = ref
    enc = ft.encode(d["input_audio"], d["input_video"], return_tokens=True)
    close(enc.logits, d["ft_multimodal"])
    close(ft.mlp_head(enc.audio), d["ft_audioonly"])
    close(ft.mlp_head(enc.visual), d["ft_videoonly"])
    assert set(enc.tokens) == {"audio", "visual", "joint"}
    close(enc.tokens["joint"].mean(1), enc.joint, 0)
    audio_only = ft.encode(d["input_audio"], None)
    assert audio_only.joint is None and audio_only.logits is None
    close(audio_only.audio, enc.audio, 0)


@torch.no_grad()
def test_forward_feat(ref):
    family, d, pre, ft = ref
    a, v = d["input_audio"], d["input_video"]
    if family == "cav":
        fa, fv = pre.forward_feat(a, v)
        close(fa, d["pretrain_forward_feat_audio"])
        close(fv, d["pretrain_forward_feat_video"])
        ta, tv = ft.forward_feat(a, v, "av")
        close(ta, d["ft_forward_feat_av_audio"])
        close(tv, d["ft_forward_feat_av_video"])
        assert d["ft_forward_feat_a_equals_av_audio"]
        close(ft.forward_feat(a, v, "a"), ta, 0)
    else:  # Social-MAE gains forward_feat here; it must agree with encode
        fa, fv = pre.forward_feat(a, v)
        enc = pre.encode(a, v)
        close(fa.mean(1), enc.audio)
        close(fv.mean(1), enc.visual)


@torch.no_grad()
def test_social_mae_tubelet_token_order():
    d = torch.load(FIXTURES / "socialmae_shared.pt", weights_only=False)
    pre = SocialMAE(**d["config_pretrain"])
    pre.load_state_dict(weights_from_rule(d["keys_pretrain"], d["weight_seed"]), strict=True)
    close(pre.patch_embed_v(d["input_video"][:1])[0, :8], d["patch_embed_v_tokens_sample0"])


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
