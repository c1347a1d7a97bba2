"""Weights, heads and task models as a lab without internet meets them: files downloaded by hand,
official state dicts given where the messages suggest them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from socialfeat.heads import load_task
from socialfeat.models import (
    create_model,
    get_pretrained_cfg,
    load_model,
    register_pretrained,
    registry,
)


@pytest.fixture
def tiny_released_task(monkeypatch):
    """A released-style task entry 'social-mae-tinyemo' (tiny architecture), so `--tasks tinyemo` is a
    released task name; its file is not in the cache (offline)."""
    monkeypatch.setattr(registry, "_PRETRAINED", dict(registry._PRETRAINED))
    cfg = dataclasses.replace(get_pretrained_cfg("social-mae-emotion"), name="social-mae-tinyemo",
                              arch="social-mae-tiny", task_name="tinyemo", filename="tinyemo.pth")
    register_pretrained(cfg)
    monkeypatch.setenv("SOCIALFEAT_OFFLINE", "1")
    return cfg


def test_an_official_task_model_downloaded_by_hand_is_taken_under_its_task_name(tiny_released_task, tiny_ckpt,
                                                                                tmp_path):
    """Offline, `--tasks emotion` says 'pass --tasks emotion=PATH'; the official file (a bare state dict,
    DataParallel prefix) then runs with the entry's task and labels. It was refused as having no task head."""
    torch.manual_seed(0)
    model = create_model("social-mae-tiny", kind="finetune", label_names=list(tiny_released_task.label_names))
    official = tmp_path / "social-mae-ft-cremad.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, official)
    backbone = load_model(tiny_ckpt).info
    task = load_task(f"tinyemo={official}", backbone)
    assert task.task_type == "classification" and task.label_names == list(tiny_released_task.label_names)
    assert torch.equal(task.model.mlp_head[1].weight, model.mlp_head[1].weight)


def test_a_head_or_foreign_state_dict_given_as_weights_is_named_in_one_line(tmp_path):
    """`extract --weights heads/emotion.pt` (a head from finetune --probe): the error names the file and
    says it goes to --tasks; it said 'emotion: not a CAV-MAE / Social-MAE state dict' (the file's stem)."""
    from socialfeat.heads import TaskHead, save_head
    from socialfeat.models import CheckpointError

    head = save_head(TaskHead(64, 2), tmp_path / "emotion.pt", task="emotion", task_type="classification",
                     label_names=["a", "b"], embedding="joint", backbone_sha256="0" * 64, backbone_name="x")
    with pytest.raises(CheckpointError, match=f"^{head}: a task head .* give it with --tasks NAME={head}$"):
        load_model(head)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match=f"^{other}: not a CAV-MAE / Social-MAE state dict"):
        load_model(other)


def test_finetune_metrics_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """`finetune --overwrite` stopped (or out of disk) while writing <output>.metrics.json kept a
    truncated JSON beside the head; now the earlier file stays whole, as the head's does."""
    from pathlib import Path

    from socialfeat import finetune

    out = tmp_path / "head.pt"
    path = finetune.write_metrics({"held_out": {"accuracy": 0.5}}, out)
    before = path.read_text()
    real = Path.write_text

    def half_then_full(self, data, *a, **kw):
        real(self, data[: len(data) // 2], *a, **kw)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError):
        finetune.write_metrics({"held_out": {"accuracy": 0.9}, "folds": list(range(50))}, out)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pt.metrics.json"]


@pytest.mark.parametrize("name", ["", " ", "emo/x"])
def test_a_task_name_that_cannot_name_its_predictions_is_refused_before_any_work(name, tiny_ckpt, tmp_path):
    """`--tasks emo/x=head.pt` wrote predictions/emo/x, a file load_features could not read (exit 0);
    `--tasks =head.pt` ended with an h5py traceback after the videos were encoded."""
    from socialfeat.encoder import build_predictors
    from socialfeat.errors import UsageError
    from socialfeat.heads import TaskHead, save_head

    net = load_model(tiny_ckpt)
    head = save_head(TaskHead(64, 2), tmp_path / "head.pt", task="emo", task_type="classification",
                     label_names=["a", "b"], embedding="joint", backbone_sha256=net.info.sha256,
                     backbone_name=net.info.name)
    assert [p.name for p in build_predictors(net, [f"emo={head}"], torch.device("cpu"))] == ["emo"]
    with pytest.raises(UsageError, match="a task name must be non-empty and without '/'"):
        build_predictors(net, [f"{name}={head}"], torch.device("cpu"))


def test_a_released_task_of_another_model_family_is_refused_before_downloading_it(tmp_path, monkeypatch):
    """--tasks emotion (a Social-MAE model) with a CAV-MAE backbone: refused in one line before the
    0.7-GB task model (or the backbone) is fetched, not after."""
    from socialfeat.extract import extract
    from socialfeat.heads import HeadMismatchError

    fetched = []
    monkeypatch.setattr("socialfeat.models.hub.fetch", lambda name, **kw: fetched.append(name))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")  # (found; never opened)
    with pytest.raises(HeadMismatchError, match=r"task 'emotion': social-mae-emotion is a social-mae model, "
                                                 r"the extraction model cav-mae-base a cav-mae one"):
        extract(tmp_path / "videos", tmp_path / "out.h5", model="cav-mae-base", tasks=["emotion"], progress=False)
    assert fetched == []
