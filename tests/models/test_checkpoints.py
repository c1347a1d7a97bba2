"""Loading official and socialfeat checkpoints: strict keys, prefixes, safety, config inference."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
from conftest import FIXTURES
from models.test_parity import weights_from_rule

from socialfeat.models import (
    CAVMAE,
    CAVMAEFT,
    CheckpointError,
    SocialMAE,
    SocialMAEFT,
    create_model,
    load_model,
    save_checkpoint,
)
from socialfeat.models.checkpoint import _NoInitialisation, infer_info, strip_prefix


class NotATensor:
    """Pickled by reference: a file containing it needs arbitrary code to load."""


@pytest.mark.parametrize("fname,cls,kind", [("cavmae_shared.pt", CAVMAE, "pretrain"),
                                             ("cavmae_shared.pt", CAVMAEFT, "finetune"),
                                             ("socialmae_shared.pt", SocialMAE, "pretrain"),
                                             ("socialmae_shared.pt", SocialMAEFT, "finetune")])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_state_dict_loads_strictly(tmp_path, fname, cls, kind, prefix):
    d = torch.load(FIXTURES / fname, weights_only=False)
    sd = weights_from_rule(d[f"keys_{kind}"], 0)
    path = tmp_path / "official.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    kwargs = d[f"config_{kind}"]
    family = "cav-mae" if cls in (CAVMAE, CAVMAEFT) else "social-mae"
    from socialfeat.models.registry import get_arch_config
    config = {"name": "fixture", "model_class": cls.__name__, "model_kwargs": kwargs,
              "preprocess": get_arch_config(family)["preprocess"]}
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config))
    model = load_model(path, config=cfg_file)
    assert type(model) is cls
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert len(model.info.sha256) == 64


def test_module_prefix_is_removed_only_when_every_key_has_it():
    """A DataParallel state dict loses its ``module.`` prefix; a dict where only some keys carry
    it is left as it is (cutting 7 characters off the others would invent keys)."""
    t = torch.zeros(1)
    assert strip_prefix({"module.norm.weight": t, "module.modulex": t}) == {"norm.weight": t, "modulex": t}
    mixed = {"module.norm.weight": t, "norm.bias": t}
    assert strip_prefix(mixed) == mixed
    assert strip_prefix({"modules.norm.weight": t}) == {"modules.norm.weight": t}


@pytest.mark.parametrize("cls,kwargs", [(SocialMAEFT, {"label_dim": 6}), (SocialMAE, {}),
                                        (CAVMAE, {"norm_pix_loss": True}), (CAVMAEFT, {"label_dim": 527})])
def test_released_shapes_are_recognised_from_keys(cls, kwargs):
    with torch.device("meta"):
        official = cls(**kwargs)
        sd = official.state_dict()
        info = infer_info(sd, "x")
        from socialfeat.models.checkpoint import build_model
        rebuilt = build_model(info)
    assert info.model_class == cls.__name__
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    assert info.model_kwargs["num_heads"] == 12


def test_socialfeat_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("social-mae-tiny", kind="finetune", label_names=["x", "y"], task="classification",
                         task_name="t").eval()
    path = save_checkpoint(model, tmp_path / "sub" / "m.pt")
    loaded = load_model(path)
    assert loaded.info.label_names == ["x", "y"] and loaded.info.preprocess == model.info.preprocess
    a, v = torch.randn(1, 208, 128), torch.randn(1, 3, 112, 112, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encode(a, v).logits, model.encode(a, v).logits)
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))  # atomic write leaves no temp file


def test_a_state_dict_in_the_legacy_format_loads_like_a_zip_one(tmp_path):
    """Checkpoints are memory-mapped where their format allows; files saved before PyTorch's zip format
    (no mmap possible) are read as before, to the same weights."""
    torch.manual_seed(0)
    model = create_model("social-mae-tiny").eval()
    paths = {}
    for legacy in (False, True):
        paths[legacy] = tmp_path / f"legacy{legacy}.pth"
        torch.save({"model": model.state_dict()}, paths[legacy], _use_new_zipfile_serialization=not legacy)
    loaded = {legacy: load_model(path, config=model.info.to_dict()) for legacy, path in paths.items()}
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[True].state_dict()[k], v) and torch.equal(loaded[False].state_dict()[k], v)


def test_building_for_a_checkpoint_skips_initialisers_on_its_own_thread_only():
    """While a model is built to receive a checkpoint's tensors, torch.nn.init does nothing on that
    thread (on the meta device it would only cost start-up time), and works as usual on the others."""
    torch.manual_seed(0)
    reference = create_model("social-mae-tiny").state_dict()
    inside, release, seen = threading.Event(), threading.Event(), {}

    def builder():
        with _NoInitialisation():
            t = torch.zeros(4)
            seen["normal_"] = torch.nn.init.normal_(t).abs().sum().item()
            seen["uniform_"] = t.uniform_().abs().sum().item()
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=builder)
    thread.start()
    try:
        assert inside.wait(10)
        torch.manual_seed(0)
        meanwhile = create_model("social-mae-tiny").state_dict()  # built on another thread meanwhile
    finally:
        release.set()
        thread.join()
    assert seen == {"normal_": 0.0, "uniform_": 0.0}
    assert all(torch.equal(meanwhile[k], v) for k, v in reference.items())


def test_loading_a_checkpoint_does_not_import_the_compiler(tmp_path):
    """A random draw on the meta device imports torch's compiler stack (0.7 s of every start-up)."""
    path = save_checkpoint(create_model("social-mae-tiny").eval(), tmp_path / "m.pt")
    code = ("import sys; from socialfeat.models import load_model; load_model(sys.argv[1]); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_checkpoint_rewritten_in_place_does_not_change_a_loaded_model(tmp_path):
    """Checkpoints are read through a memory map; a loaded model owns its weights all the same (a
    file overwritten in place, as ``cp`` does, must not change them under a running job)."""
    torch.manual_seed(0)
    path = save_checkpoint(create_model("social-mae-tiny").eval(), tmp_path / "m.pt")
    loaded = load_model(path)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    data = bytearray(path.read_bytes())
    with open(path, "r+b") as f:  # the same inode, every byte after the zip's first entry flipped
        f.seek(4096)
        f.write(bytes(b ^ 0xFF for b in data[4096:]))
    assert all(torch.equal(v, before[k]) for k, v in loaded.state_dict().items())


def test_weights_are_made_our_own_on_one_thread(tmp_path):
    """own_memory runs beside busy decoding workers, where torch's copy threads would spin on their
    cores (2-3x its CPU time): each copy runs on one thread, and the caller's setting comes back."""
    from torch.overrides import TorchFunctionMode

    from socialfeat.models.checkpoint import own_memory

    class ThreadsAtClone(TorchFunctionMode):
        seen: set[int] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.clone:
                self.seen.add(torch.get_num_threads())
            return func(*args, **(kwargs or {}))

    path = save_checkpoint(create_model("social-mae-tiny").eval(), tmp_path / "m.pt")
    model = load_model(path, mapped=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadsAtClone():
            own_memory(model)
        assert ThreadsAtClone.seen == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(path)


def test_mismatch_is_explained_in_words(tmp_path):
    model = create_model("social-mae-tiny")
    sd = {k: v for k, v in model.state_dict().items() if k != "norm_a.weight"}
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"format": "socialfeat", "config": model.info.to_dict(), "state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): norm_a.weight; 1 unexpected key\(s\): extra.weight"):
        load_model(path)


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.pt")
