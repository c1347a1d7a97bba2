"""The ELAN / Praat reader and the file-to-video matching, on files written as ELAN 3.0 and Praat write them."""

from __future__ import annotations

import math

import pytest
from annotation_files import write_eaf, write_textgrid

from socialfeat.annotations import (
    AnnotationError,
    check_column_names,
    label_clips,
    load_annotations,
    match_files,
    overruns,
    read_annotation_file,
    segments_table,
)
from socialfeat.clips import SegmentsError, plan_video
from socialfeat.walk import find_videos

SPEAKER = [(1.0, 3.5, "Ana"), (5.0, 9.0, "Ben")]


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16"])
def test_eaf_tiers_media_and_time_origin(tmp_path, encoding):
    path = write_eaf(tmp_path / "s.eaf", [("speaker", SPEAKER), ("gaze", [(0.0, 7.0, "partner")])],
                     media=[("file:///x/s.mp4", "./s.mp4", 1500)], encoding=encoding,
                     ref_tiers=[("gloss", "speaker", "Symbolic_Association", [(0, "hi"), (1, "bye")])])
    f = read_annotation_file(path)
    assert f.tiers == {"speaker": SPEAKER, "gaze": [(0.0, 7.0, "partner")]}  # symbolic 'gloss' is not time-aligned
    assert f.all_tiers == ["speaker", "gaze", "gloss"]
    (link,) = f.media
    assert (link.url, link.relative_url, link.origin_s) == ("file:///x/s.mp4", "./s.mp4", 1.5)


def test_eaf_unaligned_slots_and_symbolic_tiers_take_times_as_elan_shows_them(tmp_path):
    path = write_eaf(tmp_path / "s.eaf", [("speaker", SPEAKER)],
                     subdivision=("words", "speaker", [(1, ["w1", "w2", "w3", "w4"])]),
                     ref_tiers=[("gloss", "speaker", "Symbolic_Association", [(0, "hi"), (1, "bye")]),
                                ("morph", "speaker", "Symbolic_Subdivision", [(0, "m1"), (0, "m2")])])
    assert read_annotation_file(path).tiers["words"] == [(5.0, 6.0, "w1"), (6.0, 7.0, "w2"), (7.0, 8.0, "w3"),
                                                         (8.0, 9.0, "w4")]
    f = read_annotation_file(path, tiers=["gloss", "morph"])
    assert f.tiers == {"gloss": [(1.0, 3.5, "hi"), (5.0, 9.0, "bye")],
                       "morph": [(1.0, 2.25, "m1"), (2.25, 3.5, "m2")]}


@pytest.mark.parametrize("fmt", ["long", "short"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le"])
def test_textgrid_formats_and_encodings(tmp_path, fmt, encoding):
    labels = [(1.5, 4.25, 'Ana says "hi"'), (5.0, 9.5, "Bö\nzwei Zeilen")]
    path = write_textgrid(tmp_path / "s.TextGrid", [("speaker", labels)], 10.0, fmt=fmt, encoding=encoding,
                          points=[("events", [(2.5, "clap")])], newline="\r\n" if fmt == "long" else "\n")
    f = read_annotation_file(path)
    assert f.tiers == {"speaker": labels}  # gaps (empty intervals) are not annotations; point tiers are skipped
    assert f.all_tiers == ["speaker", "events"]
    kept = read_annotation_file(path, keep_empty=True).tiers["speaker"]
    assert kept[0] == (0.0, 1.5, "") and len(kept) == 5
    with pytest.raises(AnnotationError, match="'events' is a point tier"):
        read_annotation_file(path, tiers=["events"])


def test_binary_textgrid(tmp_path):
    from pympi.Praat import (
        TextGrid,  # Praat's binary format, written by the one library that writes it
    )

    grid = TextGrid(xmax=10)
    tier = grid.add_tier("speaker")
    for start, end, value in SPEAKER:
        tier.add_interval(start, end, value + "ä")
    grid.to_file(str(tmp_path / "b.TextGrid"), mode="binary")
    assert read_annotation_file(tmp_path / "b.TextGrid").tiers == {"speaker": [(s, e, v + "ä") for s, e, v in SPEAKER]}


def test_textgrid_numbers_in_exponent_notation_and_negative_times(tmp_path):
    path = write_textgrid(tmp_path / "e.TextGrid", [("t", [(1e-05, 2e-4, "tiny"), (1, 2, "x")])], 3.0)
    assert "1e-05" in path.read_text()
    assert read_annotation_file(path).tiers["t"] == [(1e-05, 0.0002, "tiny"), (1.0, 2.0, "x")]
    path.write_text(path.read_text().replace("xmin = 1 ", "xmin = -1 "))
    with pytest.raises(AnnotationError, match=r"e.TextGrid: negative time"):
        read_annotation_file(path)


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    eaf = write_eaf(tmp_path / "a.eaf", [("speaker", SPEAKER)])
    text = eaf.read_text()
    eaf.write_text(text[: len(text) // 2])
    with pytest.raises(AnnotationError, match=r"^a.eaf: not a readable ELAN file \(ParseError: .*line \d+"):
        read_annotation_file(eaf)
    grid = write_textgrid(tmp_path / "b.TextGrid", [("speaker", SPEAKER)], 10.0)
    lines = grid.read_text().splitlines()
    grid.write_text("\n".join(lines[:20]))
    with pytest.raises(AnnotationError, match="b.TextGrid: not a readable TextGrid"):
        read_annotation_file(grid)
    grid.write_text("some notes\n")
    with pytest.raises(AnnotationError, match="b.TextGrid: not a Praat TextGrid"):
        read_annotation_file(grid)
    assert issubclass(AnnotationError, SegmentsError) and issubclass(AnnotationError, ValueError)


def test_overlaps_within_a_tier_and_duplicate_tiers_are_refused(tmp_path):
    eaf = write_eaf(tmp_path / "o.eaf", [("speaker", [(1, 3, "A"), (2.5, 4, "B")]), ("other", [(1, 3, "x")])])
    with pytest.raises(AnnotationError, match=r"o.eaf: tier 'speaker': annotations 'A' \(1.000-3.000 s\) and "
                                              r"'B' \(2.500-4.000 s\) overlap"):
        read_annotation_file(eaf)
    assert read_annotation_file(eaf, tiers=["other"]).tiers == {"other": [(1.0, 3.0, "x")]}
    grid = write_textgrid(tmp_path / "d.TextGrid", [("t", SPEAKER), ("t", SPEAKER)], 10.0)
    with pytest.raises(AnnotationError, match="two tiers are named 't'"):
        read_annotation_file(grid)


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    for rel in ("session01.mp4", "site_a/session02.mp4", "site_b/session02.mp4", "cam/left.mp4", "cam/right.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return find_videos([root])


def _files(*paths):
    return [read_annotation_file(p) for p in paths]


def test_matching_by_name_by_media_path_and_by_map(tmp_path, videos):
    ann = tmp_path / "ann"
    ann.mkdir()
    by_name = write_textgrid(ann / "session01.TextGrid", [("speaker", SPEAKER)], 10.0)
    # an ELAN file made on another machine: its absolute path is stale, its tail names the video
    stale = write_eaf(ann / "coding.eaf", [("speaker", SPEAKER)],
                      media=[("file:///C:/Users/ra/study/site_b/session02.mp4", "../../study/site_b/session02.mp4",
                              0)])
    # one ELAN file for two cameras, each with its own offset; the relative path resolves exactly
    cams = write_eaf(ann / "both.eaf", [("gaze", SPEAKER)],
                     media=[("", "../videos/cam/left.mp4", 250), ("", "../videos/cam/right.mp4", 1000)])
    orphan = write_textgrid(ann / "pilot.TextGrid", [("speaker", SPEAKER)], 10.0)
    matches, unmatched = match_files(_files(by_name, stale, cams, orphan), videos)
    found = {v: [(m.file.name, m.origin_s, m.how) for m in ms] for v, ms in matches.items()}
    assert found == {"session01.mp4": [("session01.TextGrid", 0.0, "name")],
                     "site_b/session02.mp4": [("coding.eaf", 0.0, "media")],
                     "cam/left.mp4": [("both.eaf", 0.25, "media")], "cam/right.mp4": [("both.eaf", 1.0, "media")]}
    assert unmatched == ["pilot.TextGrid"]

    mapping = tmp_path / "map.csv"
    mapping.write_text("annotation_file,video\nann/pilot.TextGrid,site_a/session02.mp4\n"
                       "session01.TextGrid,site_a/session02.mp4\n")
    matches, unmatched = match_files(_files(by_name, orphan), videos, mapping)
    assert [m.file.name for m in matches["site_a/session02.mp4"]] == ["session01.TextGrid", "pilot.TextGrid"]
    assert list(matches) == ["site_a/session02.mp4"] and unmatched == []
    mapping.write_text("annotation_file,video\npilot.TextGrid,nowhere.mp4\n")
    with pytest.raises(AnnotationError, match=r"map.csv:2: video 'nowhere.mp4' is not among the input videos"):
        match_files(_files(orphan), videos, mapping)


def test_ambiguous_matches_are_reported_by_name(tmp_path, videos):
    ann = tmp_path / "ann"
    ann.mkdir()
    two_videos = write_textgrid(ann / "session02.TextGrid", [("speaker", SPEAKER)], 10.0)
    with pytest.raises(AnnotationError, match=r"session02.TextGrid: its name fits several videos "
                                              r"\(site_a/session02.mp4, site_b/session02.mp4\)"):
        match_files(_files(two_videos), videos)
    # beside one of them, the file is that video's
    site_b = next(v for v in videos if v.relpath == "site_b/session02.mp4")
    beside = write_textgrid(site_b.path.parent / "session02.TextGrid", [("speaker", SPEAKER)], 10.0)
    matches, _ = match_files(_files(beside), videos)
    assert list(matches) == ["site_b/session02.mp4"]
    stale = write_eaf(ann / "coding.eaf", [("speaker", SPEAKER)], media=[("file:///old/disk/session02.mp4", "", 0)])
    with pytest.raises(AnnotationError, match=r"coding.eaf: its media link 'file:///old/disk/session02.mp4' fits "
                                              r"several videos \(site_a/session02.mp4, site_b/session02.mp4\)"):
        match_files(_files(stale), videos)
    a = write_textgrid(ann / "session01.TextGrid", [("speaker", SPEAKER)], 10.0)
    b = write_eaf(ann / "session01.eaf", [("gaze", SPEAKER)])
    with pytest.raises(AnnotationError, match=r"session01.mp4: several annotation files match it: "
                                              r"session01.TextGrid \(by name\), session01.eaf \(by name\)"):
        match_files(_files(a, b), videos)


def test_table_segments_and_the_planner(tmp_path, videos):
    ann = tmp_path / "ann"
    ann.mkdir()
    write_eaf(ann / "session01.eaf", [("speaker", SPEAKER), ("gaze", [(0.0, 12.0, "partner")])],
              media=[("", "./elsewhere.mp4", 500)])  # no such video: matched by name, its offset still applies
    annotations = load_annotations(ann, videos)
    table = annotations.table
    assert list(table.columns) == ["video", "start", "end", "tier", "value", "annotation_file"]
    assert table.values.tolist() == [["session01.mp4", 0.5, 12.5, "gaze", "partner", "session01.eaf"],
                                     ["session01.mp4", 1.5, 4.0, "speaker", "Ana", "session01.eaf"],
                                     ["session01.mp4", 5.5, 9.5, "speaker", "Ben", "session01.eaf"]]
    segs = segments_table(annotations)["session01.mp4"]
    clips = plan_video("vid", 10.0, 4.0, None, segs)  # the planner CSV segments use
    assert [(c.start, c.end, c.extra["tier"]) for c in clips] == [
        (0.5, 3.666667, "gaze"), (3.666667, 6.833333, "gaze"), (6.833333, 10.0, "gaze"), (1.5, 4.0, "speaker"),
        (5.5, 9.5, "speaker")]
    assert clips[2].extra == {"tier": "gaze", "value": "partner", "annotation_file": "session01.eaf",
                              "annotation_start": 0.5, "annotation_end": 12.5, "segment_index": 0}
    assert overruns(annotations, "session01.mp4", 10.0) == [
        "session01.eaf: tier 'gaze' runs to 12.50 s, past the end of the video (10.00 s); the time after the end "
        "is not used"]
    assert overruns(annotations, "session01.mp4", 12.2) == []  # within the tolerance of container durations
    with pytest.raises(AnnotationError, match=r"no annotation file has a tier named 'Speaker' "
                                              r"\(tiers found: gaze, speaker\)"):
        load_annotations(ann, videos, tiers=["Speaker"])


def test_label_clips_majority_value_and_coverage(tmp_path, videos):
    ann = tmp_path / "ann"
    ann.mkdir()
    write_textgrid(ann / "session01.TextGrid", [("speaker", [(1.0, 2.0, "A"), (2.0, 2.5, "B"), (3.0, 3.75, "B")]),
                                                ("empty", [])], 10.0)
    write_textgrid(ann / "left.TextGrid", [("gaze", [(0, 10, "partner")])], 10.0)
    annotations = load_annotations(ann, videos)
    assert annotations.tiers == ["gaze", "speaker", "empty"]
    clips = [{"start_s": 0.0, "end_s": 4.0}, {"start_s": 4.0, "end_s": 8.0}, {"start_s": 1.0, "end_s": 3.0}]
    label_clips(clips, annotations, "session01.mp4")
    # B's two pieces together cover more of the first clip than A
    assert [(c["speaker"], c["speaker_coverage"]) for c in clips] == [("B", 0.3125), ("", 0.0), ("A", 0.5)]
    assert [(c["empty"], c["empty_coverage"]) for c in clips] == [("", 0.0)] * 3  # a tier with nothing in it
    assert all(c["gaze"] == "" and math.isnan(c["gaze_coverage"]) for c in clips)  # no gaze tier for this video
    tie = label_clips([{"start_s": 1.5, "end_s": 2.5}], annotations, "session01.mp4")[0]
    assert (tie["speaker"], tie["speaker_coverage"]) == ("A", 0.5)  # a tie: the value met first
    with pytest.raises(AnnotationError, match="'start_s'"):
        check_column_names(["start_s", "gaze"], {"start_s", "end_s"})
    for order in (["gaze", "gaze_coverage"], ["gaze_coverage", "gaze"]):  # one tier's labels, the other's coverage
        with pytest.raises(AnnotationError, match="another tier's"):
            check_column_names(order, {"start_s", "end_s"})
    check_column_names(["gaze", "speaker"], {"start_s", "end_s"})
