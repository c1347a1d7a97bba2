"""A researcher's first hour: the natural mistakes get one line that says what to do, never a
traceback; interrupted runs say how to resume; files are shareable (issue: first hour)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import h5py
import pytest
from conftest import SOCIALFEAT, run_cli
from media_factory import run, speech_wav, talking_video

import socialfeat

OFFLINE = {"SOCIALFEAT_OFFLINE": "1"}


def one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_weights_and_model_options_follow_one_rule(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "x.h5"
    err = one_line_error(run_cli("extract", corpus["short"], "-o", out, "--weights", "social-mae", check=False))
    assert "registry name" in err and "--model social-mae" in err
    err = one_line_error(run_cli("extract", corpus["short"], "-o", out, "--model", tiny_ckpt, check=False))
    assert f"--weights {tiny_ckpt}" in err
    err = one_line_error(run_cli("extract", corpus["short"], "-o", out, "--model", "social-mae-tiny", check=False))
    assert "architecture without released weights" in err and "social-mae-emotion" in err


def test_task_requests_say_how_to_give_a_file(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "x.h5"
    err = one_line_error(run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt,
                                 "--tasks", "heads/x.pt", check=False))
    assert "--tasks x=heads/x.pt" in err
    err = one_line_error(run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt,
                                 "--tasks", "charisma", check=False))
    assert "not a released task" in err and "emotion" in err and "--tasks charisma=PATH" in err
    proc = run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt, "--tasks", "emotion",
                   check=False, env={**OFFLINE, "SOCIALFEAT_HOME": str(tmp_path / "cache")})
    err = one_line_error(proc, 1)
    assert "--tasks emotion=PATH" in err and "--weights PATH" not in err


@pytest.fixture(scope="module")
def small_run(corpus, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("first_hour") / "feats.h5"
    run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt, "--no-progress")
    return out


def test_report_and_info_on_the_wrong_file_or_folder(small_run, tmp_path):
    report = tmp_path / "reports" / "r.html"  # a folder that does not exist yet
    assert run_cli("report", small_run, "-o", report).returncode == 0 and report.stat().st_size > 1000
    csv = tmp_path / "feats.csv"
    csv.write_text("video,start\n")
    err = one_line_error(run_cli("info", csv, check=False))
    assert "feats.csv.h5" in err
    before = small_run.read_bytes()
    err = one_line_error(run_cli("report", small_run, "-o", small_run, check=False))
    assert "not replacing it" in err and small_run.read_bytes() == before


def test_outputs_get_the_users_permissions(small_run):
    """The umask the run inherited decides (022: rw-r--r--, as for any new file), not a temp file's rw-------."""
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(small_run.stat().st_mode) == 0o666 & ~mask


def test_no_videos_and_camcorder_formats(tiny_ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = one_line_error(run_cli("extract", empty, "-o", tmp_path / "e.h5", "--weights", tiny_ckpt, check=False))
    assert "no videos found" in err
    cam = tmp_path / "camcorder"
    cam.mkdir()
    source = talking_video(tmp_path / "src.mp4", seconds=3.0)
    run("ffmpeg", "-v", "error", "-y", "-i", str(source), "-c", "copy", "-f", "mpegts", str(cam / "00001.MTS"))
    (cam / "notes.docx").write_bytes(b"PK")
    proc = run_cli("extract", cam, "-o", tmp_path / "cam.h5", "--weights", tiny_ckpt, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert list(socialfeat.load_videos(tmp_path / "cam.h5").path) == ["00001.MTS"]
    assert "1 file(s) in the input folders skipped" in proc.stderr and ".docx (1)" in proc.stderr


def test_audio_ending_before_the_picture_is_a_qc_fact_not_damage(tiny_ckpt, tmp_path):
    video = talking_video(tmp_path / "early_audio_end.mp4", seconds=6.0, audio=speech_wav(tmp_path / "a.wav", 4.5))
    out = tmp_path / "gap.h5"
    proc = run_cli("extract", video, "-o", out, "--weights", tiny_ckpt, "--clip-seconds", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr  # not "damaged": the run is clean
    row = socialfeat.load_videos(out).iloc[0]
    assert row.status == "ok" and row.audio_gap_s == pytest.approx(1.5, abs=0.1)
    clips = socialfeat.load_features(out, embeddings=None)
    assert clips.qc_flags.str.contains("audio_partial|no_audio").any()
    assert len(socialfeat.load_errors(out)) == 0


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_says_the_run_resumes(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "interrupted.h5"
    args = [str(SOCIALFEAT), "extract", str(corpus["root"]), "-o", str(out), "--weights", str(tiny_ckpt),
            "--workers", "0", "--batch-size", "1", "--hop-seconds", "0.5", "--no-progress"]  # much left after
    # the first video; started as from a terminal (Ctrl-C's default disposition, not blocked)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_terminal_signals)
    parts = tmp_path / "interrupted.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.h5")):  # an event: a first video is journalled
        time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)  # frozen at once, so the run cannot finish before Ctrl-C lands
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and not out.exists()
    resumed = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--hop-seconds", "0.5",
                      "--no-progress")
    assert "reused" in resumed.stderr
    with h5py.File(out) as f:
        assert len(f["videos/path"]) == 13


def test_sigterm_to_the_whole_job_stops_it_as_ctrl_c_does(corpus, tiny_ckpt, tmp_path):
    """A cluster at a job's time limit (or requeueing it) sends SIGTERM to every process of the job:
    the run stops cleanly (exit 143, one message, no traceback), no decoding worker outlives it,
    and the same command resumes from the journal."""
    out = tmp_path / "terminated.h5"
    args = [str(SOCIALFEAT), "extract", str(corpus["root"]), "-o", str(out), "--weights", str(tiny_ckpt),
            "--workers", "2", "--batch-size", "1", "--hop-seconds", "0.5", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a job's
    parts = tmp_path / "terminated.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("*.h5")):  # an event: a first video is journalled
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGSTOP)  # the whole group frozen, so the run cannot finish first
    os.killpg(proc.pid, signal.SIGTERM)
    os.killpg(proc.pid, signal.SIGCONT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr and not out.exists()
    deadline = time.time() + 10
    while time.time() < deadline:  # the workers were stopped by the run, not left to the kernel
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("a decoding worker outlived the terminated run")
    resumed = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--hop-seconds", "0.5",
                      "--no-progress")
    assert "reused" in resumed.stderr
    with h5py.File(out) as f:
        assert len(f["videos/path"]) == 13


def test_demo_runs_offline_and_says_where_everything_went(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", out, env={**OFFLINE, "SOCIALFEAT_HOME": str(tmp_path / "no-cache")})
    assert proc.returncode == 0, proc.stderr
    for thing in ("videos", "feats.h5", "report.html", "load_features"):
        assert thing in proc.stdout
    clips = socialfeat.load_features(out / "feats.h5")
    assert len(clips) == 18 and clips.joint_000.notna().all()  # 3 videos x 12 s in the tiny model's 2-s clips
    assert set(socialfeat.load_videos(out / "feats.h5").path) == {f"P0{i}/session1.mp4" for i in (1, 2, 3)}
    assert (out / "report.html").stat().st_size > 10_000
    again = run_cli("demo", "--out", out, check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
