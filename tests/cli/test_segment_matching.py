"""Segments never land on the wrong video: nested studies with the same file names, rows naming
videos in every way people write them, times past the end (issue: first hour)."""

from __future__ import annotations

import pytest
from conftest import run_cli
from media_factory import talking_video

import socialfeat


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
                   "P02/session1.mp4,1000,2500\n", "past")  # milliseconds
    assert proc.returncode == 3
    errors = socialfeat.load_errors(study / "past.h5")
    notes = errors[errors.stage == "segments"].message.tolist()
    assert any("line(s) 2 (2-4.5 s) run past" in m for m in notes) and any("line(s) 3" in m for m in notes)
    videos = socialfeat.load_videos(study / "past.h5").set_index("path")
    assert videos.loc["P01/session1.mp4", "status"] == "ok"  # notes do not make a video damaged
    assert videos.loc["P02/session1.mp4", "status"] == "no_clips"
    assert "milliseconds" in videos.loc["P02/session1.mp4", "error"]
    clips = socialfeat.load_features(study / "past.h5", embeddings=None)
    assert clips[clips.path == "P01/session1.mp4"].end_s.max() <= 3.1
