"""Input folders as labs keep them: sessions linked in from elsewhere (a link that points back up
included), a folder and a file the run may not read, a Matroska recording whose picture starts after its
sound, a broadcast recording whose sound changes layout midway; through the real CLI, results read
back from HDF5."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import SOCIALFEAT
from media_factory import talking_video

import socialfeat


def _as_permissions_say() -> list[str]:
    """A command prefix under which root too is refused what file permissions refuse (root reads a
    mode-000 folder otherwise); none for another user."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "the tests run as root: setpriv (util-linux) is needed to drop root's permission override"
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}"]


@pytest.fixture(scope="module")
def lab_tree(tiny_ckpt, tmp_path_factory):
    base = tmp_path_factory.mktemp("lab")
    ffmpeg = ["ffmpeg", "-v", "error", "-y"]
    source = talking_video(base / "source.mp4", seconds=6.0, size="160x120")
    project, elsewhere = base / "project", base / "storage" / "site2"
    (project / "site1").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    shutil.copy(source, project / "site1" / "a.mp4")
    # the picture starts 2 s after the sound (ffmpeg's Matroska muxer: DURATION tags say where tracks end)
    subprocess.run([*ffmpeg, "-itsoffset", "2", "-i", str(source), "-i", str(source),
                    "-map", "0:v", "-map", "1:a", "-c", "copy", str(elsewhere / "late picture.mkv")], check=True)
    # MPEG-TS whose AC-3 sound turns from stereo to mono at 4 s (a keyframe; timestamps go on)
    subprocess.run([*ffmpeg, "-i", str(source), "-t", "4", "-c:v", "copy", "-c:a", "ac3", "-ac", "2",
                    str(base / "first.ts")], check=True)
    subprocess.run([*ffmpeg, "-ss", "4", "-i", str(source), "-c:v", "copy", "-c:a", "ac3", "-ac", "1",
                    "-output_ts_offset", "4", str(base / "second.ts")], check=True)
    (project / "site1" / "broadcast.ts").write_bytes((base / "first.ts").read_bytes()
                                                     + (base / "second.ts").read_bytes())
    (project / "site2").symlink_to(elsewhere, target_is_directory=True)  # a session folder linked in
    (elsewhere / "up").symlink_to(project, target_is_directory=True)  # a link back up: a loop
    locked = project / "locked"
    locked.mkdir()
    shutil.copy(source, locked / "b.mp4")
    locked.chmod(0)
    unreadable = project / "site1" / "no access.mp4"  # a file the run may not read
    shutil.copy(source, unreadable)
    unreadable.chmod(0)
    out = base / "feats.h5"
    try:
        proc = subprocess.run([*_as_permissions_say(), str(SOCIALFEAT), "extract", str(project), "-o", str(out),
                               "--weights", str(tiny_ckpt), "--workers", "1", "--no-progress"],
                              capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
        unreadable.chmod(0o644)
    assert out.exists(), proc.stderr
    return out, proc


def test_linked_folders_are_walked_once_even_through_a_loop(lab_tree):
    out, proc = lab_tree
    videos = socialfeat.load_videos(out).set_index("path")
    # every video once, under the path it has in the project (the loop does not add project/site2/up/...)
    assert sorted(videos.index) == ["site1/a.mp4", "site1/broadcast.ts", "site1/no access.mp4",
                                    "site2/late picture.mkv"], proc.stderr
    assert set(socialfeat.load_features(out).path) == set(videos.index) - {"site1/no access.mp4"}


def test_a_folder_that_cannot_be_read_is_named(lab_tree):
    out, proc = lab_tree
    line = next((ln for ln in proc.stderr.splitlines() if "could not be read" in ln), "")
    assert "locked" in line and "Permission denied" in line, proc.stderr
    # in the output too (a stderr line scrolls by in a cluster job's log), and in the run's summary
    rows = socialfeat.load_errors(out)
    folder = rows[rows["stage"] == "walk"]
    assert len(folder) == 1 and folder["path"].iloc[0].endswith("/locked") and folder["video_id"].iloc[0] == ""
    assert "Permission denied" in folder["message"].iloc[0] and "not included" in folder["message"].iloc[0]
    assert "1 input folder(s) could not be read (see the errors table)" in proc.stderr


def test_a_file_that_cannot_be_read_says_so(lab_tree):
    out, proc = lab_tree
    assert proc.returncode == 3  # finished, one input could not be used
    row = socialfeat.load_videos(out).set_index("path").loc["site1/no access.mp4"]
    # the file's permissions, not its content: a rerun tries it again
    assert row.status == "error" and row.error == "open: cannot be read (PermissionError: Permission denied)"
    assert "no access.mp4: open: cannot be read" in proc.stderr


def test_a_matroska_picture_that_starts_after_the_sound_is_ok(lab_tree):
    out, proc = lab_tree
    row = socialfeat.load_videos(out).set_index("path").loc["site2/late picture.mkv"]
    assert row.status == "ok" and row.n_clips == 3 and row.audio_gap_s == pytest.approx(2.0, abs=0.1)


def test_sound_that_changes_layout_midway_is_used(lab_tree):
    out, proc = lab_tree
    row = socialfeat.load_videos(out).set_index("path").loc["site1/broadcast.ts"]
    assert row.status == "ok" and row.n_clips == 3 and row.audio_duration_s == pytest.approx(6.0, abs=0.1)
    clips = socialfeat.load_features(out).query("path == 'site1/broadcast.ts'")
    assert clips.has_audio.all() and (clips.coverage_audio > 0.95).all()


def test_an_unreadable_folder_alone_makes_the_run_partial_and_stays_in_merged_shards(tiny_ckpt, tmp_path):
    """Every video read cleanly, but a site folder could not be listed: exit status 3 (some of the input is
    missing), and the folder's row survives `socialfeat merge` of the shards (once, not once per shard)."""
    source = talking_video(tmp_path / "source.mp4", seconds=4.0, size="96x64")
    project = tmp_path / "project"
    for site in ("site1", "site2", "site3"):
        (project / site).mkdir(parents=True)
        shutil.copy(source, project / site / "a.mp4")
    (project / "site3").chmod(0)
    shards = [tmp_path / f"part-{i}.h5" for i in (1, 2)]
    try:
        for i, out in enumerate(shards, 1):
            proc = subprocess.run([*_as_permissions_say(), str(SOCIALFEAT), "extract", str(project), "-o", str(out),
                                   "--weights", str(tiny_ckpt), "--workers", "0", "--shard", f"{i}/2",
                                   "--no-progress"], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 3, proc.stderr
            assert set(socialfeat.load_videos(out)["status"]) <= {"ok"}
    finally:
        (project / "site3").chmod(0o755)
    merged = tmp_path / "feats.h5"
    subprocess.run([str(SOCIALFEAT), "merge", *map(str, shards), "-o", str(merged)], check=True, capture_output=True)
    assert sorted(socialfeat.load_videos(merged)["path"]) == ["site1/a.mp4", "site2/a.mp4"]
    rows = socialfeat.load_errors(merged)
    assert rows["stage"].tolist() == ["walk"] and rows["path"].iloc[0] == str((project / "site3").resolve())
