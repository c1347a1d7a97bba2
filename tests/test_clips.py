"""Clip planning and annotation files."""

from __future__ import annotations

import pytest

from socialfeat.clips import SegmentsError, plan_video, plan_windows, read_segments
from socialfeat.errors import UsageError


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


def test_extra_columns_are_typed_as_a_spreadsheet_means_them(tmp_path):
    f = tmp_path / "seg.csv"
    f.write_text("video,start,end,id,turn,score,name,big,zero\n"
                 "a.mp4,0,1,007,1,0.5,Nan,12345678901234567890,0\n"
                 "a.mp4,1,2,012,2,,Inf,1,0.5\n"
                 "a.mp4,2,3,13,3,2,Ann,2,-0.25\n")
    rows = read_segments(f)["a.mp4"]
    assert [r["id"] for r in rows] == ["007", "012", "13"]  # an ID with a leading zero stays text
    assert [r["turn"] for r in rows] == [1, 2, 3] and all(type(r["turn"]) is int for r in rows)
    assert [r["score"] for r in rows] == [0.5, None, 2.0]  # empty: missing (NaN once stored), not text
    assert [r["name"] for r in rows] == ["Nan", "Inf", "Ann"]  # names that Python's float() would read
    assert [r["big"] for r in rows] == ["12345678901234567890", "1", "2"]  # beyond int64: text, digits kept
    assert [r["zero"] for r in rows] == [0.0, 0.5, -0.25]


def test_spreadsheet_residue_is_ignored_and_stray_values_are_refused(tmp_path):
    f = tmp_path / "seg.csv"
    # trailing commas (empty cells past the header), an unnamed empty column, blank and empty rows
    f.write_text("video,start,end,speaker,\na.mp4,0,2,x,,\n\n,,,,\na.mp4,2,4,y,\n")
    rows = read_segments(f)["a.mp4"]
    assert [(r["speaker"], r["segment_row"]) for r in rows] == [("x", 2), ("y", 5)]
    assert set(rows[0]) == {"video", "start", "end", "segment_row", "speaker"}
    f.write_text("video,start,end\na.mp4,0,2,\na.mp4,2,4,oops\n")
    with pytest.raises(SegmentsError, match=r"seg.csv:3: 4 fields but the header names 3 columns"):
        read_segments(f)
    f.write_text("video,start,end,\na.mp4,0,2,oops\n")
    with pytest.raises(SegmentsError, match="column 4 holds values but has no name"):
        read_segments(f)
    f.write_text("video,start,end,speaker,Speaker,speaker\na.mp4,0,2,x,y,z\n")
    with pytest.raises(SegmentsError, match="names column 'speaker' twice"):
        read_segments(f)


def test_a_windows_1252_file_is_read_with_a_warning(tmp_path, caplog):
    f = tmp_path / "seg.csv"
    f.write_bytes("video,start,end,speaker\ncaf\u00e9.mp4,0,2,Jos\u00e9 \u2013 P1\n".encode("cp1252"))
    rows = read_segments(f)["caf\u00e9.mp4"]
    assert rows[0]["speaker"] == "Jos\u00e9 \u2013 P1"
    assert "not UTF-8 (line 2); read as Windows-1252" in caplog.text
    f.write_bytes("video,start,end,speaker\na.mp4,0,2,J\u00f6rg\n".encode("utf-16"))  # Excel's 'Unicode' text
    assert read_segments(f)["a.mp4"][0]["speaker"] == "J\u00f6rg"


def test_columns_the_planner_adds_are_refused(tmp_path):
    f = tmp_path / "seg.csv"
    f.write_text("video,start,end,segment_row\na.mp4,0,2,7\n")
    with pytest.raises(SegmentsError, match=r"seg.csv: column\(s\) 'segment_row' would overwrite"):
        read_segments(f)
    f.write_text("video,start,end,start_s\na.mp4,0,2,7\n")
    with pytest.raises(SegmentsError, match="'start_s'"):
        read_segments(f, lambda name: name == "start_s")


@pytest.mark.parametrize("option", ["clip_seconds", "hop_seconds"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e-9, 0.0, -1.0])
def test_window_lengths_the_planner_cannot_use_are_usage_errors(tmp_path, option, value):
    from socialfeat.extract import extract

    with pytest.raises(UsageError, match=f"{option} must be a finite number of seconds, at least 0.01"):
        extract([tmp_path], tmp_path / "out.h5", **{option: value})  # before anything else: no video needed
    assert not (tmp_path / "out.h5.parts").exists()


def test_excel_csv_with_semicolons_decimal_commas_and_clock_times(tmp_path):
    """Excel where the decimal separator is a comma writes ';'-separated cells and '1,5'; ELAN's text
    export and Excel's time cells write hh:mm:ss.mmm. Read as meant, not refused as one column."""
    f = tmp_path / "seg.csv"
    f.write_text("Video;Start;End;rating;note\r\na.mp4;1,5;3;0,75;2,5 min\r\n;;;;\r\n"
                 "a.mp4;00:01:02,250;01:00:00;1;x\r\n", encoding="cp1252")
    rows = read_segments(f)["a.mp4"]
    assert [(r["start"], r["end"], r["rating"], r["note"]) for r in rows] == [
        (1.5, 3.0, 0.75, "2,5 min"), (62.25, 3600.0, 1.0, "x")]
    f.write_text("video\tstart\tend\na.mp4\t00:00:01.5\t2\n")
    assert [(r["start"], r["end"]) for r in read_segments(f)["a.mp4"]] == [(1.5, 2.0)]
    f.write_text('video,start,end,n\na.mp4,"1,5",2,"1,500"\n')  # a comma file: '1,500' may be 1500 (US Excel)
    with pytest.raises(SegmentsError, match=r"seg.csv:2: start/end must be seconds or hh:mm:ss.mmm, got '1,5'"):
        read_segments(f)
    f.write_text("video;start;end\na.mp4;1:30;2:00\n")  # minutes or hours: not guessed
    with pytest.raises(SegmentsError, match=r"start/end must be seconds or hh:mm:ss.mmm, got '1:30'"):
        read_segments(f)
