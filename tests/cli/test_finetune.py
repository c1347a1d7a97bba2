"""Task heads on the user's labels (``socialfeat finetune``) and predictions in ``extract --tasks``,
on generated recordings with a learnable signal: speech vs silence vs noise, and noise loudness."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from media_factory import make_task_corpus

import socialfeat
from socialfeat.finetune import group_ids, grouped_folds

AMPLITUDES = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 0.9]


@pytest.fixture(scope="module")
def task_media(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks") / "videos"
    make_task_corpus(root)
    sound = root.parent / "sound.csv"
    lines = ["video,start,end,sound,speaker"]
    for i in range(4):  # speaker s{i} appears in three recordings
        lines += [f"speech_{i}.mp4,0,6,speech,s{i}", f"silence_{i}.mp4,0,6,silence,s{i}",
                  f"noise_{i}.mp4,0,6,noise,s{i}"]
    sound.write_text("\n".join(lines) + "\n")
    loud = root.parent / "loudness.csv"
    # two traits: loudness on a 0-1 scale, (dBFS + 40) / 40, and its complement
    loud.write_text("video,start,end,loudness,quietness\n" + "".join(
        f"level_{i}.mp4,0,6,{(20 * math.log10(a) + 40) / 40:.4f},{1 - (20 * math.log10(a) + 40) / 40:.4f}\n"
        for i, a in enumerate(AMPLITUDES)))
    return root, sound, loud


@pytest.fixture(scope="module")
def sound_probe(task_media, tiny_ckpt, tmp_path_factory):
    """One probe run with extraction (its features file serves the --features tests), on labels with
    a row naming no video; returns the head and the finished process."""
    root, sound, _ = task_media
    labels = tmp_path_factory.mktemp("probe") / "sound_ghost.csv"
    labels.write_text(sound.read_text() + "ghost.mp4,0,6,speech,s9\n")
    head = labels.parent / "sound_head.pt"
    proc = run_cli("finetune", root, "--task", "sound", "--labels", labels, "-o", head, "--probe", "--weights",
                   tiny_ckpt, "--embedding", "audio", "--group-columns", "speaker", "--cv", "4", "--no-progress")
    return head, proc


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def metrics_of(path) -> dict:
    """The metrics file, parsed strictly: bare NaN or Infinity (not JSON) fails."""
    return json.loads(open(str(path) + ".metrics.json").read(), parse_constant=_no_constant)


def one_line_error(proc, code: int, *needles: str) -> None:
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("socialfeat: error: ") or last.startswith("Error: "), proc.stderr
    for needle in needles:
        assert needle in last, proc.stderr


def labels_csv(path: Path, column: str, labels: dict[str, object]) -> Path:
    """A labels CSV with one whole-recording (0-6 s) segment per video."""
    path.write_text(f"video,start,end,{column}\n" + "".join(f"{v}.mp4,0,6,{x}\n" for v, x in labels.items()))
    return path


def on_features(sound_probe, labels, out, *args: str, check: bool = False):
    """finetune --probe --features on the module's extracted features file."""
    head, _ = sound_probe
    return run_cli("finetune", "--task", "t", "--labels", labels, "-o", out, "--probe", "--features",
                   str(head) + ".features.h5", "--embedding", "audio", "--epochs", "50", *args, check=check)


def test_grouped_splits_never_leak():
    df = pd.DataFrame({"path": ["a", "a", "b", "c", "d", "e"], "speaker": ["x", "x", "x", "y", "z", "z"]})
    groups = group_ids(df, ["speaker"])
    assert groups[0] == groups[1] == groups[2] and groups[4] == groups[5] and len(set(groups)) == 3
    for train, test in grouped_folds(groups, 3, seed=0):
        assert not set(df.path[train]) & set(df.path[test])
        assert not set(df.speaker[train]) & set(df.speaker[test])


def test_probe_classifies_sound_and_extract_writes_probabilities(task_media, sound_probe, tiny_ckpt, tmp_path):
    root, _, _ = task_media
    head, _ = sound_probe
    m = metrics_of(head)
    assert m["task_type"] == "classification" and m["folds"] == 4 and m["n_groups"] == 4
    assert m["label_names"] == ["noise", "silence", "speech"]
    score, base = m["held_out"]["balanced_accuracy"]["mean"], m["baseline"]["balanced_accuracy"]["mean"]
    assert score >= 0.8 and score > base + 0.3, m

    out = tmp_path / "pred.h5"
    proc = run_cli("extract", root, "-o", out, "--weights", tiny_ckpt, "--tasks", f"sound={head}",
                   "--csv", tmp_path / "csv", "--no-progress")
    assert proc.returncode == 0
    with h5py.File(out) as f:
        ds = f["predictions/sound"]
        labels = [x.decode() if isinstance(x, bytes) else x for x in ds.attrs["label_names"]]
        assert labels == ["noise", "silence", "speech"] and ds.attrs["task"] == "classification"
        np.testing.assert_allclose(ds[()].sum(axis=1), 1.0, atol=1e-5)
    clips = pd.read_csv(tmp_path / "csv" / "clips.csv")
    probs = clips[["sound_noise", "sound_silence", "sound_speech"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    speech = clips[clips.path.str.startswith("speech_")]
    assert (speech[["sound_noise", "sound_silence", "sound_speech"]].to_numpy().argmax(1) == 2).mean() > 0.8


def test_probe_regression_beats_the_mean(task_media, tiny_ckpt, tmp_path):
    root, _, loud = task_media
    head = tmp_path / "loud_head.pt"
    run_cli("finetune", root, "--task", "loudness", "--labels", loud, "-o", head, "--probe", "--weights",
            tiny_ckpt, "--embedding", "audio", "--type", "regression", "--cv", "4", "--no-progress")
    m = metrics_of(head)
    assert m["task_type"] == "regression" and m["n_groups"] == 8
    assert m["label_names"] == ["loudness", "quietness"] and {"mae_quietness", "r_quietness"} <= set(m["held_out"])
    score, base = m["held_out"]["mae_mean"]["mean"], m["baseline"]["mae_mean"]["mean"]
    assert score < base - 0.1 and m["held_out"]["r_mean"]["mean"] > 0.5, m  # MAE on the labels' own scale
    # the same head refitted under its own name from the features file the first run extracted
    # (no videos needed); replacing it takes --overwrite
    run_cli("finetune", "--task", "loudness", "--labels", loud, "-o", head, "--probe", "--features",
            str(head) + ".features.h5", "--embedding", "audio", "--type", "regression", "--cv", "4",
            "--overwrite")
    assert metrics_of(head)["held_out"] == m["held_out"]
    # predictions come in the order of --tasks (not alphabetically)
    out = tmp_path / "two.h5"
    run_cli("extract", root / "speech_0.mp4", "-o", out, "--weights", tiny_ckpt, "--tasks",
            f"zeta={head},alpha={head}", "--no-progress")
    columns = [c for c in socialfeat.load_features(out, embeddings=None).columns if c.endswith("ness")]
    assert columns == ["zeta_loudness", "zeta_quietness", "alpha_loudness", "alpha_quietness"]


def test_full_finetuning_beats_chance(task_media, tiny_ckpt, tmp_path):
    root, sound, _ = task_media
    model = tmp_path / "sound_model.pt"
    run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", model, "--weights", tiny_ckpt,
            "--group-columns", "speaker", "--val-fraction", "0.25", "--epochs", "6", "--lr", "5e-4",
            "--head-lr-mult", "10", "--batch-size", "6", "--workers", "0", "--no-progress")
    m = metrics_of(model)
    assert m["mode"] == "full"
    assert m["held_out"]["balanced_accuracy"]["mean"] >= 0.6, m  # chance: 1/3
    out = tmp_path / "own.h5"
    run_cli("extract", root / "speech_0.mp4", "-o", out, "--weights", tiny_ckpt, "--tasks", f"sound={model}",
            "--no-progress")
    df = socialfeat.load_features(out, embeddings=None)
    np.testing.assert_allclose(df[["sound_noise", "sound_silence", "sound_speech"]].sum(axis=1), 1.0, atol=1e-5)


def test_head_refuses_another_backbone(task_media, tiny_ckpt, tiny_ft_ckpt, tmp_path):
    root, sound, _ = task_media
    head = tmp_path / "h.pt"
    run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", head, "--probe", "--weights", tiny_ckpt,
            "--label-columns", "sound", "--no-progress")
    proc = run_cli("extract", root / "speech_0.mp4", "-o", tmp_path / "x.h5", "--weights", tiny_ft_ckpt,
                   "--tasks", f"sound={head}", check=False)
    assert proc.returncode == 1 and "was fitted on backbone" in proc.stderr and "\n" == proc.stderr[-1]


def test_finetune_refuses_to_replace_an_existing_file(task_media, tiny_ckpt, tmp_path):
    root, sound, _ = task_media
    head = tmp_path / "head.pt"
    head.write_bytes(b"a head fitted last week")
    proc = run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", head, "--probe", "--weights",
                   tiny_ckpt, "--no-progress", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{head} already exists: use --overwrite to replace it" in proc.stderr
    assert head.read_bytes() == b"a head fitted last week"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pt"]  # nothing extracted or written


def test_full_finetuning_skips_a_damaged_file(task_media, tiny_ckpt, tmp_path):
    root, _, _ = task_media
    corpus = tmp_path / "videos"
    corpus.mkdir()
    names = ["speech_0", "speech_1", "silence_0", "silence_1"]
    for name in names:
        shutil.copy(root / f"{name}.mp4", corpus)
    data = (root / "speech_2.mp4").read_bytes()
    damaged = corpus / "truncated.mp4"  # the container promises 6 s; a third of the bytes remain
    damaged.write_bytes(data[: len(data) // 3])
    labels = tmp_path / "labels.csv"
    labels.write_text("video,start,end,sound\n" + "".join(f"{n}.mp4,0,6,{n.split('_')[0]}\n" for n in names)
                      + "truncated.mp4,3,6,speech\n")  # its labelled segment lies past the remaining data
    model = tmp_path / "model.pt"
    proc = run_cli("finetune", corpus, "--task", "sound", "--labels", labels, "-o", model, "--weights", tiny_ckpt,
                   "--val-fraction", "0.4", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                   "--no-progress")
    assert proc.returncode == 0 and model.is_file()
    skipped = metrics_of(model)["skipped_clips"]
    assert skipped and {c["path"] for c in skipped} == {str(damaged)}, skipped
    assert proc.stderr.count(f"skipping damaged clips of {damaged}") == 1, proc.stderr


def test_a_split_that_cannot_work_is_refused_before_extraction(task_media, tiny_ckpt, tmp_path):
    """--cv 5 over 4 groups (speakers joining recordings) fails at once (not after hours of extraction); a numeric column read as
    classes says so and names --type regression."""
    root, sound, _ = task_media
    head = tmp_path / "h.pt"
    proc = run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", head, "--probe", "--weights",
                   tiny_ckpt, "--group-columns", "speaker", "--cv", "5", "--no-progress", check=False)
    assert proc.returncode == 2 and "--cv 5" in proc.stderr and "4 independent group" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not Path(str(head) + ".features.h5").exists()
    likert = tmp_path / "likert.csv"
    rows = [line.split(",") for line in Path(sound).read_text().splitlines()]
    rows = [rows[0][:3] + ["rapport"]] + [r[:3] + [str(1 + i % 7)] for i, r in enumerate(rows[1:])]
    likert.write_text("\n".join(",".join(r) for r in rows) + "\n")
    proc = run_cli("finetune", root, "--task", "rapport", "--labels", likert, "-o", head, "--probe", "--weights",
                   tiny_ckpt, "--cv", "20", "--no-progress", check=False)
    assert "classification of 'rapport' into 7 classes" in proc.stderr and "--type regression" in proc.stderr


def test_a_row_naming_no_video_is_warned_about_once(sound_probe):
    _, proc = sound_probe
    assert proc.stderr.count("name no input video") == 1, proc.stderr


def test_probe_on_features_takes_clips_and_labels_from_the_labels_file(sound_probe, tmp_path):
    """The features file supplies embeddings only: the labels file decides which clips (4 of its 12
    recordings, 3 clips each) and what they are called (red/blue, not its sound column)."""
    colours = labels_csv(tmp_path / "colours.csv", "colour", {"speech_0": "red", "speech_1": "red",
                                                             "silence_0": "blue", "silence_1": "blue"})
    proc = on_features(sound_probe, colours, tmp_path / "c.pt")
    assert proc.returncode == 0, proc.stderr
    m = metrics_of(tmp_path / "c.pt")
    assert m["label_names"] == ["blue", "red"] and m["n_clips"] == 12 and m["n_groups"] == 4, m


def test_probe_on_features_refuses_labelled_clips_it_lacks(sound_probe, tmp_path):
    part = tmp_path / "part.csv"  # speech_0's clips are 0-2, 2-4, 4-6 s: none covers 1-2 s
    part.write_text("video,start,end,sound\nspeech_0.mp4,1,5,speech\nsilence_0.mp4,0,6,silence\n"
                    "silence_1.mp4,0,6,silence\nspeech_1.mp4,0,6,speech\n")
    one_line_error(on_features(sound_probe, part, tmp_path / "p.pt"), 2, "lacks the clips of 1 labelled segment",
                   "line 2: speech_0.mp4 1-5 s")
    ghost = labels_csv(tmp_path / "ghost.csv", "sound", {"speech_0": "speech", "level_9": "speech",
                                                          "silence_0": "silence", "silence_1": "silence"})
    one_line_error(on_features(sound_probe, ghost, tmp_path / "g.pt"), 2, "line(s) 3 name no video of")
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "g.pt").exists()


def test_missing_labels_written_as_na_are_refused(sound_probe, tmp_path):
    """R's write.csv writes NA; spreadsheets nan, NULL, N/A: missing values, not a class or a reason to
    read a score column as classes."""
    for column, value, rows in (("score", "nan", {"speech_0": 1.5, "speech_1": 3.5, "silence_0": 4.0}),
                                ("colour", "NA", {"speech_0": "red", "speech_1": "red", "silence_0": "blue"}),
                                ("colour", "NULL", {"speech_0": "red", "speech_1": "red", "silence_0": "blue"})):
        labels = labels_csv(tmp_path / f"{value}.csv", column, {**rows, "silence_1": value})
        one_line_error(on_features(sound_probe, labels, tmp_path / "na.pt"), 2,
                       f"label column {column!r} is missing (written {value!r}) at line(s) 5")
    assert not (tmp_path / "na.pt").exists()


def test_numeric_classes_are_ordered_as_numbers(sound_probe, tmp_path):
    videos = [f"{kind}_{i}" for kind in ("speech", "silence", "noise") for i in range(4)]
    labels = labels_csv(tmp_path / "twelve.csv", "rank", {v: k + 1 for k, v in enumerate(videos)})
    proc = on_features(sound_probe, labels, tmp_path / "r.pt", "--cv", "2")
    assert proc.returncode == 0, proc.stderr
    assert metrics_of(tmp_path / "r.pt")["label_names"] == [str(k) for k in range(1, 13)]


def test_a_single_class_held_out_fold_has_no_balanced_accuracy(sound_probe, task_media, tmp_path):
    """One held-out recording holds one class: its balanced accuracy is undefined (null, with a
    warning), not the 0.0 a majority baseline of another class would get."""
    _, sound, _ = task_media
    proc = on_features(sound_probe, sound, tmp_path / "s.pt", "--label-columns", "sound", "--val-fraction", "0.05")
    assert proc.returncode == 0 and "hold clips of one class only" in proc.stderr, proc.stderr
    m = metrics_of(tmp_path / "s.pt")
    assert m["single_class_folds"] == [1] and m["held_out"]["accuracy"]["mean"] is not None
    for scores in (m["held_out"], m["baseline"]):
        assert scores["balanced_accuracy"] == {"mean": None, "undefined_folds": 1}, m


def test_metrics_file_is_strict_json(sound_probe, tmp_path):
    """Pearson's r of one held-out recording (labels constant) is undefined: null, not bare NaN."""
    videos = [f"{kind}_{i}" for kind in ("speech", "silence", "noise") for i in range(4)]
    labels = labels_csv(tmp_path / "score.csv", "score", {v: round(0.5 + 0.25 * k, 2) for k, v in enumerate(videos)})
    proc = on_features(sound_probe, labels, tmp_path / "r.pt", "--type", "regression", "--val-fraction", "0.05")
    assert proc.returncode == 0, proc.stderr
    m = metrics_of(tmp_path / "r.pt")  # strict: NaN fails
    assert m["held_out"]["r_mean"]["mean"] is None and m["held_out"]["mae_mean"]["mean"] > 0, m


def test_features_without_probe_is_a_usage_error(task_media, sound_probe, tmp_path):
    root, sound, _ = task_media
    head, _ = sound_probe
    proc = run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", tmp_path / "m.pt", "--features",
                   str(head) + ".features.h5", check=False)
    one_line_error(proc, 2, "--features works with --probe only")
    assert not (tmp_path / "m.pt").exists()


def test_full_finetuning_checks_its_output_before_training(task_media, tiny_ckpt, tmp_path):
    root, sound, _ = task_media
    (tmp_path / "afile").write_text("not a folder")
    proc = run_cli("finetune", root, "--task", "sound", "--labels", sound, "-o", tmp_path / "afile" / "m.pt",
                   "--weights", tiny_ckpt, "--label-columns", "sound", "--workers", "0", "--no-progress",
                   check=False, timeout=60)
    one_line_error(proc, 2, "it is a file, not a folder")
    assert "task:" not in proc.stderr  # refused before the labels were even read


def test_full_finetuning_names_a_held_out_fold_it_cannot_read(task_media, tiny_ckpt, tmp_path):
    root, _, _ = task_media
    corpus = tmp_path / "videos"
    corpus.mkdir()
    for name in ("speech_0", "silence_0"):
        shutil.copy(root / f"{name}.mp4", corpus)
    data = (root / "speech_1.mp4").read_bytes()
    (corpus / "truncated.mp4").write_bytes(data[: len(data) // 3])
    labels = tmp_path / "labels.csv"
    labels.write_text("video,start,end,sound\nspeech_0.mp4,0,6,speech\nsilence_0.mp4,0,6,silence\n"
                      "truncated.mp4,3,6,speech\n")  # its labelled segment lies past the remaining data
    proc = run_cli("finetune", corpus, "--task", "sound", "--labels", labels, "-o", tmp_path / "m.pt", "--weights",
                   tiny_ckpt, "--cv", "3", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress",
                   check=False)
    one_line_error(proc, 1, "held-out fold", "none of its clips could be read (truncated.mp4: ")
    assert not (tmp_path / "m.pt").exists()


def test_labels_after_the_end_of_a_video_are_named_in_a_warning(sound_probe, task_media, tiny_ckpt, tmp_path):
    """A labelled segment that starts after its (6 s) video ends has no clip: it was left out without a word
    (labels made for a longer version of the recording lose rows, or a whole class, silently)."""
    labels = tmp_path / "late.csv"
    labels.write_text("video,start,end,sound\nspeech_0.mp4,0,6,speech\nsilence_0.mp4,0,6,silence\n"
                      "speech_1.mp4,0,6,speech\nsilence_1.mp4,0,6,silence\nspeech_1.mp4,8,12,silence\n")
    proc = on_features(sound_probe, labels, tmp_path / "p.pt")
    assert proc.returncode == 0, proc.stderr
    assert "1 labelled segment(s) start after the end of their video (line 6: speech_1.mp4 8-12 s, video 6.00 s)" \
        in proc.stderr, proc.stderr
    root, _, _ = task_media
    short = tmp_path / "short.csv"  # one 2-s clip per recording: a full finetuning that takes seconds
    short.write_text("video,start,end,sound\nspeech_0.mp4,0,2,speech\nsilence_0.mp4,0,2,silence\n"
                     "speech_0.mp4,7,9,silence\n")
    proc = run_cli("finetune", root, "--task", "sound", "--labels", short, "-o", tmp_path / "m.pt", "--weights",
                   tiny_ckpt, "--val-fraction", "0.5", "--epochs", "1", "--batch-size", "2", "--workers", "0",
                   "--no-progress")
    assert "1 labelled segment(s) start after the end of their video (line 4: speech_0.mp4 7-9 s, video 6.00 s)" \
        in proc.stderr, proc.stderr


def test_full_finetuning_killed_by_sigterm_resumes_from_its_last_epoch_and_ends_as_if_never_stopped(
        task_media, tiny_ckpt, tmp_path):
    """A cluster job at its time limit: SIGTERM once the first epoch is saved, the same command again goes on
    from there (it does not train from the start) and writes the model and metrics of a run never stopped."""
    import signal
    import subprocess
    import time

    import torch
    from conftest import SOCIALFEAT

    root, sound, _ = task_media
    labels = tmp_path / "two_speakers.csv"  # (6 of the 12 recordings: a short run)
    labels.write_text("".join(line for line in sound.read_text().splitlines(keepends=True)
                              if not line.rstrip().endswith(("s2", "s3"))))
    args = ["--task", "sound", "--labels", str(labels), "--weights", str(tiny_ckpt), "--group-columns", "speaker",
            "--val-fraction", "0.5", "--epochs", "2", "--lr", "5e-4", "--batch-size", "6", "--workers", "0",
            "--no-progress"]
    straight = tmp_path / "straight.pt"
    run_cli("finetune", root, "-o", straight, *args)

    model = tmp_path / "cut.pt"
    progress = Path(str(model) + ".progress.pt")
    proc = subprocess.Popen([str(SOCIALFEAT), "finetune", str(root), "-o", str(model), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert f"every finished epoch is kept ({progress})" in stderr
    assert progress.exists() and not model.exists()
    saved = torch.load(progress, weights_only=False)
    assert (saved["stage"], saved["epoch"]) < (1, 2)  # (stopped before the last training's last epoch)

    again = run_cli("finetune", root, "-o", model, *args)
    assert f"resuming full finetuning from {progress}: training {saved['stage'] + 1}, {saved['epoch']}" in again.stderr
    assert not progress.exists()
    a, b = torch.load(straight, weights_only=False), torch.load(model, weights_only=False)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert metrics_of(model)["held_out"] == metrics_of(straight)["held_out"]
