"""Clip planning and annotation files."""

from __future__ import annotations

import pytest

from socialfeat.clips import plan_video, plan_windows, read_segments


def test_windows_tile_and_keep_a_half_covered_tail():
    assert plan_windows(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_windows(0, 9.9, 4) == [(0, 4), (4, 8)]  # 1.9 s tail < half a window
    assert plan_windows(0, 10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert plan_windows(0, 1.5, 4) == [(0, 1.5)]  # a short recording still gives one padded clip


def test_long_recordings_do_not_drift():
    wins = plan_windows(0, 3600.0, 0.1)
    assert len(wins) == 36000 and wins[-1] == (3599.9, 3600.0)


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError):
        plan_windows(0, 10, 0)
    with pytest.raises(ValueError):
        plan_windows(0, 10, 4, -1)


def test_segments_carry_columns(tmp_path):
    f = tmp_path / "seg.csv"
    f.write_text("video,start,end,speaker,turn\na.mp4,1.0,3.0,therapist,1\na.mp4,5,14,client,2\nb.mp4,0,1,x,3\n")
    table = read_segments(f)
    assert set(table) == {"a.mp4", "b.mp4"} and table["a.mp4"][1]["speaker"] == "client"
    clips = plan_video("vid", 12.0, 4.0, None, table["a.mp4"])
    # the second segment, 5-14 s, is cut at the end of the recording (12 s) and into two equal pieces
    assert [(c.start, c.end) for c in clips] == [(1.0, 3.0), (5.0, 8.5), (8.5, 12.0)]
    assert [c.extra["speaker"] for c in clips] == ["therapist", "client", "client"]
    assert [c.extra["segment_index"] for c in clips] == [0, 1, 1] and clips[0].extra["turn"] == 1.0
    assert clips[0].coverage == 0.5 and all(c.window == 4.0 for c in clips)


def test_segment_errors_name_the_line(tmp_path):
    f = tmp_path / "seg.csv"
    f.write_text("video,start,end\na.mp4,3,2\n")
    with pytest.raises(ValueError, match=r"seg.csv:2: segment end 2.0 is not after start 3.0"):
        read_segments(f)
    f.write_text("video,begin,end\na.mp4,1,2\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_segments(f)
