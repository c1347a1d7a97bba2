"""ELAN and Praat annotations through the real CLI: as segments (``--segments``), as clip labels
(``--annotate``) and as finetuning labels, on a video with speech at known times."""

from __future__ import annotations

import json
import shutil

import h5py
import pandas as pd
import pytest
from annotation_files import write_eaf, write_textgrid
from conftest import run_cli
from media_factory import speech_at_known_times

import socialfeat

DURATION = 14.0
ORIGIN_MS = 500  # coding_A.eaf's TIME_ORIGIN: annotation time 0 is 0.5 s into session01.mp4


def _gaze(video: str) -> list[tuple[float, float, str]]:
    """Gaze coding on the video clock; session01's runs 1 s past the end of the video."""
    return [(0.5, 7.0, "partner"), (7.0, 15.0, "away")] if video == "session01" else \
        [(0.0, 5.0, "away"), (5.0, 14.0, "partner")]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Two recordings (the same speech at known times) and their annotations: an ELAN file matched
    through its media path (with a TIME_ORIGIN), a short-format UTF-16 TextGrid matched by name,
    and a TextGrid that belongs to no video."""
    tmp = tmp_path_factory.mktemp("annotated")
    video, truth = speech_at_known_times(tmp / "make", seconds=DURATION)
    videos = tmp / "videos"
    videos.mkdir()
    for name in ("session01", "session02"):
        shutil.copy(video, videos / f"{name}.mp4")
    speaker = [(round(a, 3), round(b, 3), who) for (a, b), who in zip(truth, "AB")]
    ann = tmp / "annotations"
    ann.mkdir()
    shift = ORIGIN_MS / 1000
    write_eaf(ann / "coding_A.eaf",
              [("speaker", [(a - shift, b - shift, v) for a, b, v in speaker]),
               ("gaze", [(a - shift, b - shift, v) for a, b, v in _gaze("session01")])],
              media=[("file:///lab/recordings/session01.mp4", "../videos/session01.mp4", ORIGIN_MS)],
              ref_tiers=[("gloss", "speaker", "Symbolic_Association", [(0, "greeting"), (1, "counting")])])
    write_textgrid(ann / "session02.TextGrid", [("speaker", speaker), ("gaze", _gaze("session02"))], DURATION,
                   fmt="short", encoding="utf-16")
    write_textgrid(ann / "orphan.TextGrid", [("speaker", [(1, 2, "A")])], 5.0)
    return {"videos": videos, "ann": ann, "speaker": speaker, "tmp": tmp}


@pytest.fixture(scope="module")
def as_segments(media, tiny_ckpt):
    out = media["tmp"] / "segments.h5"
    proc = run_cli("extract", media["videos"], "-o", out, "--weights", tiny_ckpt, "--segments", media["ann"],
                   "--no-progress", "--workers", "0")
    return out, proc


@pytest.fixture(scope="module")
def as_labels(media, tiny_ckpt):
    out = media["tmp"] / "annotated.h5"
    proc = run_cli("extract", media["videos"], "-o", out, "--weights", tiny_ckpt, "--annotate", media["ann"],
                   "--csv", media["tmp"] / "csv", "--no-progress", "--workers", "0")
    return out, proc


def test_annotations_become_segments_on_the_video_clock(as_segments, media):
    out, proc = as_segments
    assert proc.returncode == 0, proc.stderr  # the overrun is flagged, the videos are fine
    df = socialfeat.load_features(out, embeddings=None)
    assert set(df.tier) == {"speaker", "gaze"}  # time-aligned tiers only: not the symbolic 'gloss'
    assert set(df.annotation_file) == {"coding_A.eaf", "session02.TextGrid"}
    for path, group in df.groupby("path"):
        speech = group[group.tier == "speaker"]
        turns = [(g.start_s.min(), g.end_s.max(), g.value.iloc[0]) for _, g in speech.groupby("segment_index")]
        # TIME_ORIGIN honoured for the ELAN file; the TextGrid's empty intervals are not segments
        assert [v for _, _, v in turns] == ["A", "B"], path
        for (start, end, _), (onset, offset, _) in zip(turns, media["speaker"]):
            assert start == pytest.approx(onset, abs=2e-3) and end == pytest.approx(offset, abs=2e-3), path
        assert (speech.annotation_start.round(3).isin([a for a, _, _ in media["speaker"]])).all()
        gaze = group[group.tier == "gaze"]
        for (value, a, b), pieces in gaze.groupby(["value", "annotation_start", "annotation_end"]):
            # a long annotation is cut into window-sized pieces that tile it (up to the video's end)
            assert (pieces.end_s - pieces.start_s <= pieces.window_s + 1e-6).all()
            assert pieces.start_s.min() == pytest.approx(a, abs=1e-3)
            assert pieces.end_s.max() == pytest.approx(min(b, DURATION), abs=0.05)
            assert ((pieces.start_s.iloc[1:].to_numpy() - pieces.end_s.iloc[:-1].to_numpy()) == 0).all()
    errors = socialfeat.load_errors(out)
    late = errors[errors.stage == "annotations"]
    assert list(late.path) == ["session01.mp4"] and "coding_A.eaf: tier 'gaze' runs to 15.00 s" in late.message[0]
    assert "coding_A.eaf: tier 'gaze' runs to 15.00 s" in proc.stderr
    assert "orphan.TextGrid" in proc.stderr  # matches no video: named, not dropped silently
    assert set(socialfeat.load_videos(out).status) == {"ok"}


def _expected(intervals, a: float, b: float) -> tuple[str, float]:
    cover: dict[str, float] = {}
    for s, e, v in intervals:
        overlap = min(e, b) - max(s, a)
        if overlap > 0:
            cover[v] = cover.get(v, 0) + overlap
    if not cover:
        return "", 0.0
    best = max(cover, key=cover.get)
    return best, cover[best] / (b - a)


def test_annotate_labels_fixed_windows_with_tier_columns(as_labels, media):
    out, proc = as_labels
    assert proc.returncode == 0, proc.stderr
    df = socialfeat.load_features(out, embeddings="joint")
    assert {"speaker", "speaker_coverage", "gaze", "gaze_coverage"} <= set(df.columns)
    assert "gloss" not in df.columns and "segment_index" not in df.columns
    for path, group in df.groupby("path"):
        assert list(group.start_s) == [2.0 * k for k in range(7)]  # the windows as planned
        gaze = _gaze(path.removesuffix(".mp4"))
        for row in group.itertuples():
            for tier, intervals in (("speaker", media["speaker"]), ("gaze", gaze)):
                value, share = _expected(intervals, row.start_s, row.end_s)
                assert getattr(row, tier) == value, (path, row.start_s, tier)
                assert getattr(row, f"{tier}_coverage") == pytest.approx(share, abs=2e-3), (path, row.start_s)
    clips = pd.read_csv(media["tmp"] / "csv" / "clips.csv", keep_default_na=False)
    assert {"speaker", "speaker_coverage", "gaze", "gaze_coverage"} <= set(clips.columns)
    with h5py.File(out) as f:
        settings = json.loads(f.attrs["settings"])
    assert settings["annotate"] == str(media["ann"]) and settings["segments"] == ""


def test_annotate_labels_speech_clips(media, tiny_ckpt, tmp_path):
    out = tmp_path / "speech.h5"
    proc = run_cli("extract", media["videos"], "-o", out, "--weights", tiny_ckpt, "--segments", "speech",
                   "--annotate", media["ann"], "--tiers", "speaker", "--include", "session02.mp4", "--no-progress",
                   "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    df = socialfeat.load_features(out, embeddings=None)
    assert "speech_fraction" in df and df.start_s.min() > 1.0  # clips as voice activity planned them
    assert "gaze" not in df  # --tiers
    for row in df.itertuples():
        value, share = _expected(media["speaker"], row.start_s, row.end_s)
        assert (row.speaker, row.speaker_coverage) == (value, pytest.approx(share, abs=2e-3))
    assert set(df.speaker) == {"A", "B"} and df.speaker_coverage.min() > 0.5


def test_finetune_labels_from_an_annotation_tier(as_segments, media, tiny_ckpt, tmp_path):
    out, _ = as_segments
    head = tmp_path / "extracted.pt"
    proc = run_cli("finetune", media["videos"], "--task", "speaker", "--labels", media["ann"], "--tiers", "speaker",
                   "--probe", "--weights", tiny_ckpt, "-o", head, "--epochs", "20", "--workers", "0",
                   "--no-progress", check=False)
    assert proc.returncode == 0, proc.stderr
    extracted = json.loads((tmp_path / "extracted.pt.metrics.json").read_text())
    assert set(socialfeat.load_features(str(head) + ".features.h5", embeddings=None).tier) == {"speaker"}
    head = tmp_path / "speaker.pt"
    proc = run_cli("finetune", "--task", "speaker", "--labels", media["ann"], "--tiers", "speaker", "--probe",
                   "--features", out, "-o", head, "--epochs", "20", check=False)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "speaker.pt.metrics.json").read_text())
    speaker_clips = (socialfeat.load_features(out, embeddings=None).tier == "speaker").sum()
    assert metrics["label_names"] == ["A", "B"] and metrics["label_tier"] == "speaker"
    assert metrics["n_clips"] == speaker_clips == extracted["n_clips"] and metrics["n_groups"] == 2
    assert extracted["label_names"] == ["A", "B"]
    proc = run_cli("finetune", "--task", "x", "--labels", media["ann"], "--probe", "--features", out,
                   "-o", tmp_path / "x.pt", check=False)
    assert proc.returncode == 2 and "name the label tier with --tiers" in proc.stderr


def _one_line_usage_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_bad_annotation_files_are_one_line_usage_errors(media, tiny_ckpt, tmp_path):
    videos = media["videos"]
    cases = tmp_path / "cases"
    broken = cases / "broken"
    broken.mkdir(parents=True)
    text = (media["ann"] / "coding_A.eaf").read_text()
    (broken / "session01.eaf").write_text(text[: len(text) // 2])  # malformed XML
    proc = run_cli("extract", videos, "-o", tmp_path / "x.h5", "--weights", tiny_ckpt, "--segments", broken,
                   check=False)
    _one_line_usage_error(proc, "session01.eaf", "not a readable ELAN file", "line")

    twice = cases / "twice"
    twice.mkdir()
    shutil.copy(media["ann"] / "session02.TextGrid", twice / "session01.TextGrid")
    write_eaf(twice / "session01.eaf", [("speaker", [(1, 2, "A")])])
    proc = run_cli("extract", videos, "-o", tmp_path / "x.h5", "--weights", tiny_ckpt, "--annotate", twice,
                   check=False)
    _one_line_usage_error(proc, "session01.mp4", "session01.eaf", "session01.TextGrid")

    overlap = write_eaf(cases / "session02.eaf", [("speaker", [(1, 3, "A"), (2.5, 4, "B")])])
    proc = run_cli("extract", videos, "-o", tmp_path / "x.h5", "--weights", tiny_ckpt, "--segments", overlap,
                   check=False)
    _one_line_usage_error(proc, "session02.eaf", "tier 'speaker'", "overlap")

    assert not (tmp_path / "x.h5").exists()
