"""Annotation and segment files as researchers' tools write them: cases found by testing the
reader, the matcher and the CSV readers against such files."""

from __future__ import annotations

import unicodedata

import pytest
from annotation_files import LINGUISTIC_TYPES, write_textgrid

from socialfeat.annotations import AnnotationError, match_files, read_annotation_file
from socialfeat.clips import match_segments
from socialfeat.walk import find_videos

SPEAKER = [(1.0, 3.5, "Ana"), (5.0, 9.0, "Ben")]


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    for rel in ("site1/cam.mp4", "site2/cam.mp4", "séance.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return find_videos([root])

# utterance 0-4 s; words: w1, w2 (Time_Subdivision of utterance); syllables: s1, s2, s3 in w1 and s4
# in w2 (Time_Subdivision of words). Slots are shared as ELAN shares them; only 0 and 4000 ms are aligned.
_NESTED_TIERS = {
    "utterance": ("default-lt", None, [("ts1", "ts2", "utt")]),
    "words": ("subdivision", "utterance", [("ts1", "ts3", "w1"), ("ts3", "ts2", "w2")]),
    "syllables": ("subdivision", "words", [("ts1", "ts4", "s1"), ("ts4", "ts5", "s2"), ("ts5", "ts3", "s3"),
                                           ("ts3", "ts2", "s4")]),
}


def _nested_eaf(path, order):
    body, aid = [], 0
    for tier in order:
        ltype, parent, items = _NESTED_TIERS[tier]
        ref = f' PARENT_REF="{parent}"' if parent else ""
        body.append(f'<TIER LINGUISTIC_TYPE_REF="{ltype}"{ref} TIER_ID="{tier}">')
        for s, e, value in items:
            aid += 1
            body.append(f'<ANNOTATION><ALIGNABLE_ANNOTATION ANNOTATION_ID="a{aid}" TIME_SLOT_REF1="{s}" '
                        f'TIME_SLOT_REF2="{e}"><ANNOTATION_VALUE>{value}</ANNOTATION_VALUE>'
                        '</ALIGNABLE_ANNOTATION></ANNOTATION>')
        body.append("</TIER>")
    path.write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<ANNOTATION_DOCUMENT AUTHOR="" DATE="2024-05-01T10:00:00+01:00" FORMAT="3.0" VERSION="3.0" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="http://www.mpi.nl/tools/elan/EAFv3.0.xsd">
<HEADER MEDIA_FILE="" TIME_UNITS="milliseconds"/>
<TIME_ORDER><TIME_SLOT TIME_SLOT_ID="ts1" TIME_VALUE="0"/><TIME_SLOT TIME_SLOT_ID="ts4"/><TIME_SLOT TIME_SLOT_ID="ts5"/>
<TIME_SLOT TIME_SLOT_ID="ts3"/><TIME_SLOT TIME_SLOT_ID="ts2" TIME_VALUE="4000"/></TIME_ORDER>
{chr(10).join(body)}
{LINGUISTIC_TYPES}
</ANNOTATION_DOCUMENT>
""", encoding="utf-8")
    return path


@pytest.mark.parametrize("order", [("utterance", "words", "syllables"), ("syllables", "words", "utterance")])
def test_nested_time_subdivisions_take_elan_times_whatever_the_tier_order(tmp_path, order):
    """Unaligned slots are spread within the parent annotation (ELAN's display), also when the file
    lists a child tier before its parent."""
    tiers = read_annotation_file(_nested_eaf(tmp_path / "nested.eaf", order)).tiers
    assert tiers["words"] == [(0.0, 2.0, "w1"), (2.0, 4.0, "w2")]
    assert tiers["syllables"] == [(0.0, 0.666667, "s1"), (0.666667, 1.333333, "s2"), (1.333333, 2.0, "s3"),
                                  (2.0, 4.0, "s4")]


def test_annotation_map_as_a_spreadsheet_saves_it(tmp_path, videos):
    """Excel's residue (rows of empty cells), its plain 'CSV' encoding (Windows-1252) and a header in
    other letters are read; a row without its video is an error naming the line, not a traceback."""
    ann = tmp_path / "ann"
    ann.mkdir()
    files = [read_annotation_file(write_textgrid(ann / name, [("speaker", SPEAKER)], 10.0), name)
             for name in ("a.TextGrid", "b.TextGrid", "c.TextGrid")]
    mapping = tmp_path / "map.csv"
    mapping.write_bytes("Annotation_File,Video\r\na.TextGrid,site1/cam.mp4\r\n,\r\nb.TextGrid,site2/cam.mp4\r\n"
                        "c.TextGrid,séance.mp4\r\n,\r\n".encode("cp1252"))
    matches, unmatched = match_files(files, videos, mapping)
    assert {v: [m.file.name for m in ms] for v, ms in matches.items()} == {
        "site1/cam.mp4": ["a.TextGrid"], "site2/cam.mp4": ["b.TextGrid"], "séance.mp4": ["c.TextGrid"]}
    assert unmatched == []
    mapping.write_text("annotation_file,video\na.TextGrid,site1/cam.mp4\nb.TextGrid\n")
    with pytest.raises(AnnotationError, match=r"map.csv:3: a row needs both an annotation file and a video"):
        match_files(files, videos, mapping)


def test_an_annotation_folder_that_mirrors_the_video_folders_matches_by_name(tmp_path, videos):
    """annotations/site1/cam.TextGrid is site1/cam.mp4's, not site2/cam.mp4's; a cam.TextGrid with
    no such folder still fits both and is refused."""
    ann = tmp_path / "annotations"
    for site in ("site1", "site2"):
        (ann / site).mkdir(parents=True)
        write_textgrid(ann / site / "cam.TextGrid", [(f"speaker_{site}", SPEAKER)], 10.0)
    files = [read_annotation_file(ann / site / "cam.TextGrid", f"{site}/cam.TextGrid")
             for site in ("site1", "site2")]
    matches, unmatched = match_files(files, videos)
    assert {v: [m.file.name for m in ms] for v, ms in matches.items()} == {
        "site1/cam.mp4": ["site1/cam.TextGrid"], "site2/cam.mp4": ["site2/cam.TextGrid"]}
    loose = read_annotation_file(write_textgrid(ann / "cam.TextGrid", [("speaker", SPEAKER)], 10.0), "cam.TextGrid")
    with pytest.raises(AnnotationError, match=r"cam.TextGrid: its name fits several videos \(site1/cam.mp4, "
                                              r"site2/cam.mp4\)"):
        match_files([loose], videos)


def test_names_match_whatever_unicode_form_the_file_system_gives(tmp_path):
    """A video copied from a Mac has 'é' decomposed (NFD) in its name; the TextGrid named on Windows,
    and the map typed there, have it composed (NFC). Same name: matched, not 'matching no video'."""
    nfd, nfc = unicodedata.normalize("NFD", "séance"), unicodedata.normalize("NFC", "séance")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / f"{nfd}.mp4").write_bytes(b"")
    (tmp_path / "videos" / "other.mp4").write_bytes(b"")
    videos = find_videos([tmp_path / "videos"])
    grid = read_annotation_file(write_textgrid(tmp_path / f"{nfc}.TextGrid", [("speaker", SPEAKER)], 10.0))
    matches, unmatched = match_files([grid], videos)
    assert list(matches) == [f"{nfd}.mp4"] and unmatched == []
    other = read_annotation_file(write_textgrid(tmp_path / "coding.TextGrid", [("speaker", SPEAKER)], 10.0))
    mapping = tmp_path / "map.csv"
    mapping.write_text(f"annotation_file,video\ncoding.TextGrid,{nfc}.mp4\n", encoding="utf-8")
    matches, _ = match_files([other], videos, mapping)
    assert list(matches) == [f"{nfd}.mp4"]


def test_segment_rows_match_whatever_unicode_form_the_file_system_gives(tmp_path):
    """The same for a segments CSV typed in Excel on Windows (NFC) naming videos copied from a Mac (NFD)."""
    nfd, nfc = unicodedata.normalize("NFD", "séance"), unicodedata.normalize("NFC", "séance")
    (tmp_path / "videos" / "P01").mkdir(parents=True)
    (tmp_path / "videos" / "P01" / f"{nfd}.mp4").write_bytes(b"")
    (tmp_path / "videos" / f"{nfd}2.mp4").write_bytes(b"")
    videos = find_videos([tmp_path / "videos"])
    table = {f"P01/{nfc}.mp4": [{"start": 0.0, "end": 2.0, "segment_row": 2}],
             f"{nfc}2.mp4": [{"start": 1.0, "end": 3.0, "segment_row": 3}]}
    matched = match_segments(table, videos, "segments.csv", cwd=tmp_path)
    assert sorted(matched) == sorted([f"P01/{nfd}.mp4", f"{nfd}2.mp4"])


def test_one_sites_videos_take_that_sites_files_from_an_annotation_tree_of_all_sites(tmp_path):
    """Run on videos/site1 alone (relative path cam.mp4) with the annotation tree of every site:
    site1/cam.TextGrid is its file, site2/cam.TextGrid matches no given video (warned), not an error."""
    for site in ("site1", "site2"):
        (tmp_path / "videos" / site).mkdir(parents=True)
        (tmp_path / "videos" / site / "cam.mp4").write_bytes(b"")
        (tmp_path / "ann" / site).mkdir(parents=True)
        write_textgrid(tmp_path / "ann" / site / "cam.TextGrid", [(f"speaker_{site}", SPEAKER)], 10.0)
    one_site = find_videos([tmp_path / "videos" / "site1"])
    files = [read_annotation_file(tmp_path / "ann" / site / "cam.TextGrid", f"{site}/cam.TextGrid")
             for site in ("site1", "site2")]
    matches, unmatched = match_files(files, one_site)
    assert {v: [m.file.name for m in ms] for v, ms in matches.items()} == {"cam.mp4": ["site1/cam.TextGrid"]}
    assert unmatched == ["site2/cam.TextGrid"]
    loose = [read_annotation_file(tmp_path / "ann" / site / "cam.TextGrid", "cam.TextGrid") for site in ("site1",)]
    both = loose + [read_annotation_file(tmp_path / "ann" / "site2" / "cam.TextGrid", "other/cam.TextGrid")]
    with pytest.raises(AnnotationError, match="several annotation files match it"):
        match_files(both, one_site)  # neither file's folders say which: still refused
