"""Nothing lost, nothing mixed up: a corpus with the same names under several roots, failing,
crashing and stalling videos, lying headers and odd file names, through the real CLI."""

from __future__ import annotations

import html
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SOCIALFEAT, run_cli
from media_factory import talking_video
from processes import freeze, holding, kill, resume

import socialfeat
from socialfeat.cli import _refuse_foreign_csvs
from socialfeat.clips import match_segments
from socialfeat.errors import OutputExistsError, UsageError
from socialfeat.extract import worth_retrying
from socialfeat.heads import TaskHead, save_head
from socialfeat.merge import MergeError, merge
from socialfeat.models import load_model
from socialfeat.store import VideoResult, assemble_output
from socialfeat.walk import find_videos

ODD_NAME = "we$ird %20 \\ {x} \"q\" 'q', 日本語 ü $x$.mp4"


def _lying_mkv(src: Path, out: Path, claimed_ms: float = 3.6e9) -> Path:
    """``src`` remuxed to Matroska with a Duration element claiming ``claimed_ms`` (1000 hours)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", str(out)], check=True)
    data = bytearray(out.read_bytes())
    i = data.index(b"\x44\x89\x88")  # EBML Duration, an 8-byte float
    data[i + 3:i + 11] = struct.pack(">d", claimed_ms)
    out.write_bytes(data)
    return out


def _extract_args(folder, out, ckpt, *extra) -> list[str]:
    return [str(SOCIALFEAT), "extract", str(folder), "-o", str(out), "--weights", str(ckpt), "--workers", "1",
            "--batch-size", "1", "--no-progress", *map(str, extra)]


def _run_and_catch(args: list[str], victim: Path, act) -> tuple[subprocess.CompletedProcess, bool]:
    """Run extract; when a worker of this run is caught decoding ``victim``, freeze it and
    ``act(pid)`` on it (only processes this run started are looked at)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    caught, deadline = None, time.time() + 120
    while caught is None and proc.poll() is None and time.time() < deadline:
        for pid in holding(proc.pid, victim):
            freeze(pid)
            if pid in holding(proc.pid, victim):  # still on it, and now stopped there
                caught = pid
                act(pid)
                break
            resume(pid)
        time.sleep(0.003)
    out, err = proc.communicate(timeout=300)
    if caught is not None and _alive(caught):
        kill(caught)
        raise AssertionError("the run left its stopped worker behind")
    return subprocess.CompletedProcess(args, proc.returncode, out, err), caught is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def troubled(corpus, tiny_ckpt, tmp_path_factory):
    """One folder through four runs: a worker killed on ``victim.mp4``; stalled on it (a
    timeout); a plain rerun; a rerun with --retry-failed (and CSVs)."""
    tmp = tmp_path_factory.mktemp("troubled")
    folder = tmp / "videos"
    folder.mkdir()
    victim = talking_video(folder / "victim.mp4", seconds=30.0, size="128x96")
    shutil.copy(corpus["short"], folder / ODD_NAME)
    shutil.copy(corpus["text"], folder / "notes.mp4")
    _lying_mkv(corpus["short"], folder / "liar.mkv")
    out = tmp / "feats.h5"
    runs = {"crash": _run_and_catch(_extract_args(folder, out, tiny_ckpt), victim, kill)}
    runs["crash_videos"] = socialfeat.load_videos(out).set_index("path")
    runs["stall"] = _run_and_catch(_extract_args(folder, out, tiny_ckpt, "--video-timeout", "3"), victim,
                                   lambda pid: None)
    runs["stall_videos"] = socialfeat.load_videos(out).set_index("path")
    t0 = time.time()
    runs["plain"] = run_cli(*_extract_args(folder, out, tiny_ckpt)[1:])
    runs["plain_seconds"] = time.time() - t0
    runs["retry"] = run_cli(*_extract_args(folder, out, tiny_ckpt, "--retry-failed", "--csv", tmp / "csv")[1:])
    return out, runs


def test_a_worker_killed_on_a_video_makes_it_an_error_row_and_the_rest_completes(troubled):
    _, runs = troubled
    proc, caught = runs["crash"]
    assert caught, "no worker was caught decoding victim.mp4"
    assert proc.returncode == 3, proc.stderr
    videos = runs["crash_videos"]
    assert videos.loc["victim.mp4", "status"] == "error" and videos.loc["victim.mp4", "n_clips"] == 0
    assert videos.loc["victim.mp4", "error"].startswith("worker: the decoding worker was killed by SIGKILL")
    assert videos.loc[ODD_NAME, "status"] == "ok" and videos.loc[ODD_NAME, "n_clips"] == 2


def test_a_stalled_video_times_out_and_is_not_retried_after_two_strikes(troubled):
    _, runs = troubled
    proc, caught = runs["stall"]
    assert caught and proc.returncode == 3, proc.stderr
    assert "(3 reused" in proc.stderr  # only the video that crashed a worker was tried again
    assert runs["stall_videos"].loc["victim.mp4", "error"].startswith("timeout: no progress for 3 s")
    plain = runs["plain"]
    assert "(4 reused" in plain.stderr and "3 video(s) with problems kept" in plain.stderr  # twice is enough


def test_retry_failed_processes_every_failed_video_again(troubled):
    out, runs = troubled
    assert "(1 reused" in runs["retry"].stderr  # the clean one only
    videos = socialfeat.load_videos(out).set_index("path")
    assert videos.loc["victim.mp4", "status"] == "ok" and videos.loc["victim.mp4", "n_clips"] == 15
    assert videos.loc["notes.mp4", "status"] == "error"  # its bytes are still not a video
    assert not socialfeat.load_errors(out).path.eq("victim.mp4").any()


def test_a_header_claiming_1000_hours_does_not_make_planning_run_away(troubled):
    out, _ = troubled
    liar = socialfeat.load_videos(out).set_index("path").loc["liar.mkv"]
    assert liar.duration_s == pytest.approx(3.6e6) and liar.decoded_duration_s == pytest.approx(3.0, abs=0.05)
    assert liar.status == "truncated" and liar.n_clips == 2  # the clips of what is really there


def test_odd_file_names_pass_through_hdf5_csv_and_report_unharmed(troubled, tmp_path):
    out, _ = troubled
    assert ODD_NAME in set(socialfeat.load_videos(out).path)
    assert (socialfeat.load_features(out, embeddings=None).path == ODD_NAME).sum() == 2
    csv_dir = out.parent / "csv"
    assert ODD_NAME in set(pd.read_csv(csv_dir / "videos.csv").path)
    assert (pd.read_csv(csv_dir / "clips.csv").path == ODD_NAME).sum() == 2
    report = tmp_path / "report.html"
    proc = run_cli("report", out, "-o", report)
    assert proc.returncode == 0, proc.stderr
    page = report.read_text(encoding="utf-8")
    assert html.escape(ODD_NAME) in page and ODD_NAME in html.unescape(page)


def test_report_never_replaces_the_features_file(troubled):
    out, _ = troubled
    before = out.read_bytes()
    proc = run_cli("report", out, "-o", out, check=False)
    assert proc.returncode == 2 and "not a report socialfeat wrote" in proc.stderr
    assert out.read_bytes() == before


# ---------------------------------------------------------------- identity, shards, merge
@pytest.fixture(scope="module")
def two_sites(corpus, tmp_path_factory):
    """The same relative path under two roots, different recordings."""
    root = tmp_path_factory.mktemp("sites")
    for site, src in (("site1", corpus["short"]), ("site2", corpus["talk"])):
        (root / site / "day1").mkdir(parents=True)
        shutil.copy(src, root / site / "day1" / "cam.mp4")
    return root


def _head(path: Path, ckpt: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    info = load_model(ckpt).info
    return save_head(TaskHead(64, 2), path, task="mood", task_type="classification", label_names=["calm", "tense"],
                     embedding="joint", backbone_sha256=info.sha256, backbone_name=info.name)


def _moods(path: Path) -> np.ndarray:
    return socialfeat.load_features(path, embeddings=None)[["mood_calm", "mood_tense"]].to_numpy()


def test_same_name_under_two_roots_stays_two_videos(two_sites, tiny_ckpt, tmp_path):
    out = tmp_path / "f.h5"
    journal = tmp_path / "f.h5.parts"
    journal.mkdir()
    # what a run killed inside an atomic write leaves behind, next to files that are not ours
    old = time.time() - 3600
    ours = [tmp_path / ".f.h5.abc123_z.tmp", journal / ".0123456789abcdef.h5.k2j4h5g6.tmp"]
    foreign = [tmp_path / ".notes.txt.abc123_z.tmp", journal / "keep.tmp"]
    for p in ours + foreign:
        p.write_bytes(b"x")
        os.utime(p, (old, old))
    head = _head(tmp_path / "head.pt", tiny_ckpt, 0)
    args = ["extract", two_sites / "site1", two_sites / "site2", "-o", out, "--weights", tiny_ckpt,
            "--tasks", f"mood={head}", "--no-progress"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in ours) and all(p.exists() for p in foreign)
    videos = socialfeat.load_videos(out)
    assert list(videos.path) == ["site1/day1/cam.mp4", "site2/day1/cam.mp4"] and videos.video_id.nunique() == 2
    assert len(list(journal.glob("*.h5"))) == 2  # one journal part each
    df = socialfeat.load_features(out, embeddings=None)
    assert len(df) == 2 + 5  # no clip joined to the other video's facts
    durations = df.groupby("path").video_duration_s.unique()
    assert durations["site1/day1/cam.mp4"] == pytest.approx([3.0], abs=0.1)
    assert durations["site2/day1/cam.mp4"] == pytest.approx([10.0], abs=0.1)

    # a head refitted in place under the same name: nothing is taken from the journal
    before = _moods(out)
    _head(head, tiny_ckpt, 1)
    proc = run_cli(*args)
    assert "(0 reused" in proc.stderr and not np.allclose(before, _moods(out))
    with h5py.File(out) as f:  # and the file says which head made them
        assert '"sha256"' in f.attrs["settings"]

    # a shard gets one of the two; merge wants every shard, once
    part = tmp_path / "part-1.h5"
    run_cli(*args[:3], "-o", part, "--weights", tiny_ckpt, "--shard", "1/2", "--no-progress")
    assert len(socialfeat.load_videos(part)) == 1
    missing = run_cli("merge", part, "-o", tmp_path / "m.h5", check=False)
    assert missing.returncode == 1 and "shard(s) 2/2 missing" in missing.stderr
    with pytest.raises(MergeError, match="shard 1/2 given twice"):
        merge([part, part], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_a_rerun_after_the_data_moved_reuses_it_at_its_new_place(corpus, tiny_ckpt, tmp_path):
    """Same relative paths, sizes and mtimes: reused, and source_path is where the files are now."""
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "f.h5"
    old.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy2(corpus["short"], old / name)
    run_cli("extract", old, "-o", out, "--weights", tiny_ckpt, "--no-progress")
    old.rename(new)
    proc = run_cli("extract", new, "-o", out, "--weights", tiny_ckpt, "--no-progress")
    assert "(2 reused" in proc.stderr
    assert list(socialfeat.load_videos(out).source_path) == [str(new / "a.mp4"), str(new / "b.mp4")]

    # another setting: the journal is recomputed, and the rerun says so, with what changed
    proc = run_cli("extract", new, "-o", out, "--weights", tiny_ckpt, "--no-progress", "--clip-seconds", "1")
    assert "(0 reused" in proc.stderr
    assert ("2 video(s) finished by an earlier run will be computed again: it used other settings or weights "
            "(clip_seconds 2.0 -> 1.0)") in proc.stderr
    proc = run_cli("extract", new, "-o", out, "--weights", tiny_ckpt, "--no-progress", "--clip-seconds", "1")
    assert "(2 reused" in proc.stderr and "computed again" not in proc.stderr


# ---------------------------------------------------------------- fingerprint, overwriting
def test_the_run_fingerprint_holds_the_software_versions(monkeypatch, tiny_ckpt):
    from socialfeat import extract as ex
    from socialfeat.pipeline import PlanSettings

    info, plan = load_model(tiny_ckpt).info, PlanSettings(2.0, None, "nan")
    key = ex.run_fingerprint(info, plan, [], "cpu")
    monkeypatch.setattr(ex, "__version__", "999.0")
    assert ex.run_fingerprint(info, plan, [], "cpu") != key
    assert ex.run_fingerprint(info, PlanSettings(2.0, None, "nan", precision="bf16"), [], "cpu") != key


def test_outputs_never_replace_what_the_command_did_not_write(corpus, tiny_ckpt, tmp_path):
    video = tmp_path / "talk.mp4"
    shutil.copy(corpus["talk"], video)
    proc = run_cli("extract", corpus["short"], "-o", video, "--weights", tiny_ckpt, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a socialfeat features file" in proc.stderr
    assert video.read_bytes() == corpus["talk"].read_bytes()
    notes = tmp_path / "csv" / "clips.csv"
    notes.parent.mkdir()
    notes.write_text("participant,score\n1,2\n")
    with pytest.raises(OutputExistsError, match="clips.csv exists"):
        _refuse_foreign_csvs([], str(notes.parent))
    (tmp_path / "own.csv").write_text("video_id,path,clip_index\n")
    _refuse_foreign_csvs([tmp_path / "own.csv"], None)  # a CSV socialfeat wrote may be replaced


def test_roots_are_told_apart_by_as_few_folders_as_needed(two_sites, tmp_path):
    for site in ("a/site", "b/site"):
        (tmp_path / site).mkdir(parents=True)
        shutil.copy(two_sites / "site1" / "day1" / "cam.mp4", tmp_path / site / "cam.mp4")
    refs = find_videos([tmp_path / "a" / "site", tmp_path / "b" / "site", two_sites / "site1"])
    assert [r.relpath for r in refs] == ["a/site/cam.mp4", "b/site/cam.mp4", "site1/day1/cam.mp4"]
    assert [r.relpath for r in find_videos([two_sites / "site1"])] == ["day1/cam.mp4"]  # one root: as before
    with pytest.raises(UsageError, match="fits 2 input videos"):  # segments by a shared name: refused
        match_segments({"cam.mp4": [{"segment_row": 2}]}, find_videos([two_sites / "site1", two_sites / "site2"]),
                       "segments.csv")


@pytest.mark.parametrize("status,failure,strikes,retry_failed,expected", [
    ("ok", "", 0, True, False),
    ("error", "content", 0, False, False), ("error", "content", 0, True, True),
    ("damaged", "content", 0, False, False), ("damaged", "transient", 0, False, True),
    ("error", "transient", 0, False, True), ("error", "", 0, False, True),
    ("error", "crash", 1, False, True), ("error", "timeout", 2, False, False), ("error", "crash", 2, True, True)])
def test_which_journalled_videos_a_rerun_tries_again(status, failure, strikes, retry_failed, expected):
    done = VideoResult(video={"status": status}, failure=failure, strikes=strikes)
    assert worth_retrying(done, retry_failed) is expected


def test_the_output_is_on_disk_before_it_takes_its_name(monkeypatch, tmp_path):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    out = assemble_output([], tmp_path / "f.h5", {"socialfeat_version": "x"}, 4, {})
    assert len(synced) == 1 and Path(synced[0]).name.startswith(".f.h5.") and out.is_file()


def test_a_failed_journal_write_stops_the_run_and_keeps_what_was_written(corpus, tiny_ckpt, tmp_path, monkeypatch):
    """Journal writes run on a thread of their own; a disk that fills up still stops the run, and
    the videos written before stay for the rerun."""
    from socialfeat import store
    from socialfeat.extract import extract

    real, written = store.Journal.write, []

    def write(self, result, fingerprint):
        if written:
            raise OSError(28, "No space left on device")
        real(self, result, fingerprint)
        written.append(result.video["path"])

    monkeypatch.setattr(store.Journal, "write", write)
    out = tmp_path / "full.h5"
    with pytest.raises(OSError, match="No space left"):
        extract([corpus["root"]], out, weights=tiny_ckpt, workers=1, progress=False)
    assert not out.exists() and len(written) == 1
    monkeypatch.setattr(store.Journal, "write", real)
    summary = extract([corpus["root"]], out, weights=tiny_ckpt, workers=1, progress=False)
    assert summary.n_reused == 1 and summary.n_videos == 13
