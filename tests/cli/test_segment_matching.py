"""Segments never land on the wrong video: nested studies with the same file names, rows naming
videos in every way people write them, times past the end (issue: first hour)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from media_factory import talking_video

import socialfeat
from socialfeat.heads import TaskHead, save_head
from socialfeat.models import load_model


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """study/P01/session1.mp4, study/P02/session1.mp4, study/P02/session2.mp4 (3 s each)."""
    base = tmp_path_factory.mktemp("segmatch")
    (base / "study" / "P01").mkdir(parents=True)
    first = talking_video(base / "study" / "P01" / "session1.mp4", seconds=3.0)
    for rel in ("P02/session1.mp4", "P02/session2.mp4"):
        (base / "study" / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / "study" / rel).write_bytes(first.read_bytes())
    return base


def extract(study, tiny_ckpt, csv_text: str, name: str, check: bool = True):
    seg = study / f"{name}.csv"
    seg.write_text(csv_text)
    return run_cli("extract", "study", "-o", f"{name}.h5", "--weights", tiny_ckpt, "--segments", seg.name,
                   "--clip-seconds", "1", "--no-progress", cwd=study, check=check)


def test_an_ambiguous_name_is_an_error_listing_the_candidates(study, tiny_ckpt):
    proc = extract(study, tiny_ckpt, "video,start,end\nsession1.mp4,0,1\n", "ambiguous", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "P01/session1.mp4" in proc.stderr and "P02/session1.mp4" in proc.stderr and "line 2" in proc.stderr
    assert not (study / "ambiguous.h5").exists()


def test_rows_name_videos_by_typed_path_root_path_or_unique_name(study, tiny_ckpt):
    proc = extract(study, tiny_ckpt, "Video,START,End,speaker\n"  # column names in any letter case
                   "study/P01/session1.mp4,0,1,a\n"      # as typed on the command line
                   "P02/session1.mp4,1,2,b\n"            # relative to the input folder
                   "session2.mp4,0.5,1.5,c\n"            # a name only one video has
                   "P03/session1.mp4,0,1,d\n", "named")  # no such video: listed by line
    assert "line(s) 5 name no input video" in proc.stderr
    clips = socialfeat.load_features(study / "named.h5", embeddings=None)
    got = {(row.path, row.speaker, row.segment_row) for row in clips.itertuples()}
    assert got == {("P01/session1.mp4", "a", 2), ("P02/session1.mp4", "b", 3), ("P02/session2.mp4", "c", 4)}


def test_segments_past_the_end_are_said_and_milliseconds_recognised(study, tiny_ckpt):
    proc = extract(study, tiny_ckpt, "video,start,end\n"
                   "P01/session1.mp4,2.0,4.5\n"     # runs past the 3-s end: cut there
                   "P01/session1.mp4,5,6\n"         # starts after it: dropped
                   "P02/session1.mp4,1000,2500\n"  # milliseconds
                   "P02/session2.mp4,4,5\n", "past")  # seconds, just past the end: not milliseconds
    assert proc.returncode == 3
    errors = socialfeat.load_errors(study / "past.h5")
    notes = errors[errors.stage == "segments"].message.tolist()
    assert any("line(s) 2 (2-4.5 s) run past" in m for m in notes) and any("line(s) 3" in m for m in notes)
    videos = socialfeat.load_videos(study / "past.h5").set_index("path")
    assert videos.loc["P01/session1.mp4", "status"] == "ok"  # notes do not make a video damaged
    assert videos.loc["P02/session1.mp4", "status"] == "no_clips"
    assert "milliseconds" in videos.loc["P02/session1.mp4", "error"]
    assert videos.loc["P02/session2.mp4", "status"] == "no_clips"
    assert "starts after the video's end" in videos.loc["P02/session2.mp4", "error"]
    assert "milliseconds" not in videos.loc["P02/session2.mp4", "error"]
    clips = socialfeat.load_features(study / "past.h5", embeddings=None)
    assert clips[clips.path == "P01/session1.mp4"].end_s.max() <= 3.1


def _one_line_usage_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_a_spreadsheet_export_keeps_its_values_and_types(study, tiny_ckpt):
    """Windows-1252 (Excel's plain 'CSV'), trailing commas, IDs with leading zeros, whole numbers,
    an empty cell in a numeric column: as the researcher typed them, in the HDF5 file."""
    (study / "excel.csv").write_bytes(
        "video,start,end,participant,turn,rating,speaker\n"
        "P01/session1.mp4,0,1,007,1,4.5,Jos\u00e9,\n"
        "P02/session1.mp4,0,1,012,2,,Zo\u00eb,\n".encode("cp1252"))
    proc = run_cli("extract", "study", "-o", "excel.h5", "--weights", tiny_ckpt, "--segments", "excel.csv",
                   "--include", "session1.mp4", "--clip-seconds", "1", "--no-progress", cwd=study)
    assert proc.returncode == 0, proc.stderr
    assert "excel.csv: not UTF-8 (line 2); read as Windows-1252" in proc.stderr
    clips = socialfeat.load_features(study / "excel.h5", embeddings=None).set_index("path")
    assert list(clips.participant) == ["007", "012"] and list(clips.speaker) == ["Jos\u00e9", "Zo\u00eb"]
    assert clips.turn.dtype == "int64" and list(clips.turn) == [1, 2]
    assert clips.rating.dtype == "float64" and clips.rating.iloc[0] == 4.5 and np.isnan(clips.rating.iloc[1])


def test_columns_named_like_the_tools_own_are_refused(study, tiny_ckpt):
    for column in ("start_s", "fps", "segment_index"):
        proc = extract(study, tiny_ckpt, f"video,start,end,{column}\nP01/session1.mp4,0,1,5\n", "clash", check=False)
        _one_line_usage_error(proc, f"'{column}'", "clash.csv", "rename")
    assert not (study / "clash.h5").exists() and not (study / "clash.h5.parts").exists()


def _head(path, ckpt, task: str, labels: list[str]):
    info = load_model(ckpt).info
    return save_head(TaskHead(64, len(labels)), path, task=task, task_type="classification", label_names=labels,
                     embedding="joint", backbone_sha256=info.sha256, backbone_name=info.name)


def test_prediction_columns_that_clash_are_refused_when_the_heads_load(study, tiny_ckpt):
    mood = _head(study / "mood.pt", tiny_ckpt, "mood", ["happy", "sad"])
    (study / "moods.csv").write_text("video,start,end,mine_happy\nP01/session1.mp4,0,1,0.5\n")
    base = ["extract", "study", "-o", "heads.h5", "--weights", tiny_ckpt, "--no-progress", "--clip-seconds", "1"]
    proc = run_cli(*base, "--segments", "moods.csv", "--tasks", "mine=mood.pt", cwd=study, check=False)
    _one_line_usage_error(proc, "'mine_happy'", "moods.csv", "task 'mine'")
    _head(study / "ids.pt", tiny_ckpt, "video", ["id", "other"])  # video_id: the key of the clips table
    proc = run_cli(*base, "--tasks", "video=ids.pt", cwd=study, check=False)
    _one_line_usage_error(proc, "'video_id'", "task 'video'", "ids.pt")
    _head(study / "a.pt", tiny_ckpt, "a", ["happy_sad", "x"])  # a_happy_sad, as task a_happy's label sad
    proc = run_cli(*base, "--tasks", f"a_happy={mood.name},a=a.pt", cwd=study, check=False)
    _one_line_usage_error(proc, "'a_happy_sad'", "task 'a_happy'")
    assert not (study / "heads.h5").exists() and not (study / "heads.h5.parts").exists()


def test_window_lengths_the_planner_cannot_use_are_usage_errors(study, tiny_ckpt):
    for option, value in (("--clip-seconds", "nan"), ("--clip-seconds", "inf"), ("--hop-seconds", "1e-9")):
        proc = run_cli("extract", "study", "-o", "win.h5", "--weights", tiny_ckpt, option, value, "--no-progress",
                       cwd=study, check=False, timeout=120)  # NaN and 1e-9 used to plan forever
        assert proc.returncode == 2 and "at least 0.01" in proc.stderr and option in proc.stderr, proc.stderr
    assert not (study / "win.h5").exists()


def test_finetune_names_an_empty_label_cell(study, tiny_ckpt):
    (study / "ratings.csv").write_text("video,start,end,rating\nP01/session1.mp4,0,1,1.5\n"
                                       "P02/session1.mp4,0,1,\nP02/session2.mp4,0,1,2.5\n")
    proc = run_cli("finetune", "study", "--task", "r", "--labels", "ratings.csv", "--probe", "--weights", tiny_ckpt,
                   "-o", "r.pt", "--no-progress", "--workers", "0", cwd=study, check=False)
    _one_line_usage_error(proc, "ratings.csv: label column 'rating' is empty at line(s) 3")
    assert not (study / "r.pt.features.h5").exists()
