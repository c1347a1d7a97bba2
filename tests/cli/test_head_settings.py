"""A probe head records the extraction settings that change what its embeddings describe (face crop,
clip length, missing-audio policy), and ``extract --tasks`` refuses or warns when a run differs."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

import socialfeat
from socialfeat.demo import synthetic_video
from socialfeat.finetune import finetune
from socialfeat.heads import Task, TaskHead


@pytest.fixture(scope="module")
def fitted(tiny_ckpt, tmp_path_factory):
    """Four short recordings and a joint-embedding head fitted on them by ``finetune --probe`` with the
    default extraction (whole frames, the tiny model's 2 s clips, missing audio left empty)."""
    root = tmp_path_factory.mktemp("heads")
    videos = root / "videos"
    for i in range(4):
        synthetic_video(videos / f"v{i}.mp4", seconds=4.0, size="160x120", pitch=120.0 + 60 * (i % 2), seed=i)
    labels = root / "labels.csv"
    labels.write_text("video,start,end,kind\n" + "".join(f"v{i}.mp4,0,4,{'ab'[i % 2]}\n" for i in range(4)))
    head = root / "head.pt"
    finetune([videos], labels, head, "kind", weights=tiny_ckpt, workers=0, epochs=20, progress=False)
    return videos, head


def test_finetune_records_the_settings_of_the_embeddings(fitted):
    _, head = fitted
    obj = torch.load(head, weights_only=False)
    assert obj["embedding"] == "joint"
    assert obj["settings"] == {"crop": "none", "clip_seconds": 2.0, "missing_audio": "nan"}


@pytest.mark.parametrize("option, value, fitted_with", [("--crop", "face", "--crop none"),
                                                       ("--clip-seconds", "1", "--clip-seconds 2.0")])
def test_a_head_is_refused_on_embeddings_made_otherwise(fitted, tiny_ckpt, tmp_path, option, value, fitted_with):
    videos, head = fitted
    out = tmp_path / "x.h5"
    proc = run_cli("extract", videos / "v0.mp4", "-o", out, "--weights", tiny_ckpt, "--tasks", f"kind={head}",
                   option, value, "--workers", "0", "--no-progress", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("socialfeat: error: task 'kind': head ") and str(head) in last, last
    assert f"made with {fitted_with}, this run uses {option} {value}" in last and "extract with" in last, last
    assert not out.exists()


def test_hop_is_free_and_missing_audio_only_warns(fitted, tiny_ckpt, tmp_path):
    videos, head = fitted
    out = tmp_path / "hop.h5"
    proc = run_cli("extract", videos / "v0.mp4", "-o", out, "--weights", tiny_ckpt, "--tasks", f"kind={head}",
                   "--hop-seconds", "1", "--missing-audio", "silence", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "fitted on embeddings made with --missing-audio nan, this run uses --missing-audio silence" in proc.stderr
    assert "does not record" not in proc.stderr
    df = socialfeat.load_features(out, embeddings=None)
    assert len(df) == 4 and df[["kind_a", "kind_b"]].notna().all().all()


def test_a_head_from_before_settings_were_kept_works_with_a_warning(fitted, tiny_ckpt, tmp_path):
    videos, head = fitted
    obj = torch.load(head, weights_only=False)
    obj.pop("settings", None)  # (as a head written before settings were kept)
    old = tmp_path / "old.pt"
    torch.save(obj, old)
    out = tmp_path / "old.h5"
    proc = run_cli("extract", videos / "v0.mp4", "-o", out, "--weights", tiny_ckpt, "--tasks", f"kind={old}",
                   "--clip-seconds", "1", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "does not record" in ln]
    assert len(warnings) == 1 and str(old) in warnings[0], proc.stderr
    assert "--crop, --clip-seconds, --missing-audio" in warnings[0]
    assert socialfeat.load_features(out, embeddings=None)[["kind_a", "kind_b"]].notna().all().all()


def _head(embedding: str, **fitted) -> Task:
    task = Task("t", "classification", ["a", "b"], head=TaskHead(4, 2), embedding=embedding, source="t.pt")
    task.fitted = fitted
    return task


def test_only_the_settings_an_embedding_kind_depends_on_are_checked():
    from socialfeat.heads import HeadSettingsError, check_fitted_settings

    run = {"crop": "face", "clip_seconds": 2.0, "missing_audio": "nan", "precision": "int8", "hop_seconds": 1.0}
    whole = {"crop": "none", "clip_seconds": 2.0, "missing_audio": "nan"}
    check_fitted_settings([_head("audio", clip_seconds=2.0, missing_audio="nan")], run)  # never sees the frames
    with pytest.raises(HeadSettingsError, match="--crop none, this run uses --crop face"):
        check_fitted_settings([_head("visual", crop="none", clip_seconds=2.0)], run)
    with pytest.raises(HeadSettingsError, match="--crop none"):
        check_fitted_settings([_head("joint", **whole)], run)
    check_fitted_settings([_head("joint", **whole)], dict(run, crop="none", clip_seconds=2.0 + 1e-9))
    check_fitted_settings([Task("t", "classification", ["a", "b"], model=torch.nn.Identity())], run)  # own model


def test_a_whole_finetuned_model_warns_when_the_run_uses_another_clip_length(caplog):
    """A whole model has no fitted settings but states its own clip length: another one is warned."""
    from socialfeat.heads import check_fitted_settings
    from socialfeat.models import create_model

    model = create_model("social-mae-tiny", kind="finetune", label_names=["a", "b"], task="classification",
                         task_name="t")
    own = float(model.info.preprocess.clip_seconds)
    task = Task("t", "classification", ["a", "b"], model=model, source="t.pt")
    with caplog.at_level("WARNING", logger="socialfeat.heads"):
        check_fitted_settings([task], {"crop": "none", "clip_seconds": own, "missing_audio": "nan"})
        assert not caplog.records
        check_fitted_settings([task], {"crop": "none", "clip_seconds": own * 2, "missing_audio": "nan"})
    assert [r.getMessage() for r in caplog.records] == [
        f"task 't': t.pt was finetuned on clips of {own:g} s, this run uses --clip-seconds {own * 2:g}: its "
        "predictions are for windows unlike those it learnt from"]
