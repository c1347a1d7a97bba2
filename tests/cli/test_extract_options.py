"""Input selection options and the CAV-MAE family through the real CLI."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli
from io_helpers import ffmpeg_audio, ffmpeg_frame, ffprobe_frame_times
from media_factory import talking_video

import socialfeat
from socialfeat.models import create_model, load_model, save_checkpoint
from socialfeat.preprocess import fbank, frames_tensor, video_input


def test_include_exclude_and_file_list(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "sel.h5"
    run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--include", "*.mkv",
            "--include", "nested/deeper/*", "--exclude", "*.webm", "--no-progress", "--workers", "0")
    assert list(socialfeat.load_videos(out).path) == ["nested/interview two.mkv"]

    listing = tmp_path / "list.csv"
    listing.write_text(f"path,group\n{corpus['talk']}, a\n{corpus['short']},b\n")
    out2 = tmp_path / "list.h5"
    proc = run_cli("extract", "--file-list", listing, "-o", out2, "--weights", tiny_ckpt, "--no-progress")
    assert proc.returncode == 0  # both files clean
    assert sorted(socialfeat.load_videos(out2).path) == ["short.mp4", "talk.mp4"]


def test_file_names_that_are_not_utf8_are_kept_with_their_bytes_escaped(corpus, tiny_ckpt, tmp_path):
    """A Latin-1 name from an old file server (the byte 0xe9): the run goes on, the name is stored
    with that byte written as \\xe9, and the video id stays that of the name's own bytes."""
    folder = tmp_path / "videos"
    folder.mkdir()
    latin1 = folder / os.fsdecode(b"caf\xe9.mp4")
    shutil.copy(corpus["short"], latin1)
    shutil.copy(corpus["short"], folder / "plain.mp4")
    for inputs in ([folder], [latin1]):
        out = tmp_path / f"names{len(inputs)}{inputs[0].name.isascii()}.h5"
        proc = run_cli("extract", *inputs, "-o", out, "--weights", tiny_ckpt, "--no-progress", "--csv", tmp_path / "csv")
        assert proc.returncode == 0, proc.stderr
        videos = socialfeat.load_videos(out)
        assert "caf\\xe9.mp4" in list(videos.path) and set(videos.status) == {"ok"}
        clips = socialfeat.load_features(out).groupby("path").size()  # the same recording under both names
        assert len(clips) == len(videos) and clips.min() == clips.max() > 0
    assert "caf\\xe9.mp4" in (tmp_path / "csv" / "videos.csv").read_text(encoding="utf-8")


def test_truncated_files_give_the_same_output_whatever_the_number_of_workers(tiny_ckpt, tmp_path):
    """Files cut inside a video packet (a copy that stopped): with frame threads the decoder's error
    surfaced packets later and the frames queued behind it were lost, so the last clips depended on
    the decoder threads, that is on --workers. Every decode now uses one thread."""
    folder = tmp_path / "cut"
    folder.mkdir()
    whole = talking_video(tmp_path / "whole.mp4", seconds=12.0, size="160x120").read_bytes()
    for fraction in (0.32, 0.42, 0.59, 0.62):
        (folder / f"cut{int(fraction * 100)}.mp4").write_bytes(whole[:int(len(whole) * fraction)])
    outputs = []
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}.h5"
        run_cli("extract", folder, "-o", out, "--weights", tiny_ckpt, "--no-progress", "--workers", workers)
        outputs.append((socialfeat.load_videos(out), socialfeat.load_features(out, embeddings="all")))
    (videos0, feats0), (videos2, feats2) = outputs
    facts = ["path", "n_clips", "decoded_duration_s", "decode_errors", "audio_gap_s"]
    pd.testing.assert_frame_equal(videos0[facts], videos2[facts])
    assert set(videos0.status) == {"truncated"} and (videos0.decode_errors > 0).any()
    assert feats0.path.tolist() == feats2.path.tolist()
    numbers = [c for c in feats0.columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_allclose(feats0[numbers].to_numpy(), feats2[numbers].to_numpy(), atol=1e-5)


def test_warnings_stay_one_line_and_quiet_keeps_stderr_for_errors(corpus, tiny_ckpt, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    (folder / "two\nlines.mp4").write_text("not a video\n")  # a name with a newline, and broken
    shutil.copy(corpus["short"], folder / "fine.mp4")
    out = tmp_path / "o.h5"
    proc = run_cli("extract", folder, "-o", out, "--weights", tiny_ckpt, "--no-progress")
    assert proc.returncode == 3
    warning = [line for line in proc.stderr.splitlines() if "two" in line or "lines.mp4" in line]
    assert len(warning) == 1 and "two\\nlines.mp4: open: not a readable media file" in warning[0]
    listed = run_cli("info", out).stdout
    assert "two\\nlines.mp4: open:" in listed and "\nlines.mp4" not in listed
    quiet = run_cli("-q", "extract", folder, "-o", tmp_path / "q.h5", "--weights", tiny_ckpt, "--no-progress")
    assert quiet.returncode == 3 and quiet.stderr == ""


def test_a_window_shorter_than_the_sampling_interval_says_its_frames_repeat(corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "short_windows.h5"
    run_cli("extract", corpus["talk"], "-o", out, "--weights", tiny_ckpt, "--no-progress", "--clip-seconds", "0.1",
            "--hop-seconds", "2")
    df = socialfeat.load_features(out)
    assert len(df) == 5 and (df.n_frames <= 3).all() and (df.n_frames >= 2).all()  # 0.1 s of 25 fps video
    assert df.qc_flags.str.contains("frames_repeated").all() and (df.n_frames_padded == 0).all()


def test_missing_input_is_a_usage_error(tmp_path, tiny_ckpt):
    proc = run_cli("extract", tmp_path / "nope", "-o", tmp_path / "x.h5", "--weights", tiny_ckpt, check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_missing_weights_offline_fail_with_one_message(tmp_path, corpus):
    proc = run_cli("extract", corpus["talk"], "-o", tmp_path / "x.h5", "--model", "social-mae",
                   check=False, env={"SOCIALFEAT_HOME": str(tmp_path), "SOCIALFEAT_OFFLINE": "1"})
    assert proc.returncode == 1 and "social-mae.pth" in proc.stderr and "--weights PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_released_task_offline_without_weights_fails_with_one_message(tmp_path, corpus, tiny_ckpt):
    proc = run_cli("extract", corpus["talk"], "-o", tmp_path / "x.h5", "--weights", tiny_ckpt, "--tasks", "emotion",
                   check=False, env={"SOCIALFEAT_HOME": str(tmp_path), "SOCIALFEAT_OFFLINE": "1"})
    assert proc.returncode == 1 and "social-mae-ft-cremad.pth" in proc.stderr and "Traceback" not in proc.stderr


def test_cav_mae_family_end_to_end(corpus, tmp_path):
    torch.manual_seed(3)
    ckpt = save_checkpoint(create_model("cav-mae-tiny"), tmp_path / "cav.pt")
    out = tmp_path / "cav.h5"
    proc = run_cli("extract", corpus["talk"], "-o", out, "--weights", ckpt, "--no-progress")
    assert proc.returncode == 0
    df = socialfeat.load_features(out, embeddings="all")
    assert list(df.start_s) == [0, 2, 4, 6, 8] and (df.n_frames == 1).all()
    row = df.iloc[3]
    model = load_model(ckpt)
    spec = model.info.preprocess
    pts = ffprobe_frame_times(corpus["talk"])
    (t,) = spec.frame_times(row.start_s, row.window_s)  # the window's middle frame
    idx = int(np.flatnonzero(pts <= t + 1e-6).max())
    video = video_input(frames_tensor(ffmpeg_frame(corpus["talk"], idx, 320, 240)[None], spec), spec)[None]
    audio = fbank(torch.from_numpy(ffmpeg_audio(corpus["talk"], row.start_s, 2.0)), 16000, spec)[None]
    with torch.no_grad():
        enc = model.encode(audio, video)
    for kind in ("joint", "audio", "visual"):
        np.testing.assert_allclose(row.filter(like=f"{kind}_").to_numpy(np.float32), getattr(enc, kind)[0],
                                   atol=2e-4, err_msg=kind)
    assert video.shape == (1, 3, 112, 112) and t == pytest.approx(7.0)


def test_speech_segments_follow_voice_activity(tiny_ckpt, tmp_path):
    from media_factory import speech_at_known_times

    video, truth = speech_at_known_times(tmp_path / "vad")
    out = tmp_path / "speech.h5"
    proc = run_cli("extract", video, "-o", out, "--weights", tiny_ckpt, "--segments", "speech", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    df = socialfeat.load_features(out, embeddings=None)
    regions = [(g.start_s.min(), g.end_s.max()) for _, g in df.groupby("segment_index")]
    assert len(regions) == len(truth), (regions, truth)
    for (start, end), (onset, offset) in zip(regions, truth):
        assert abs(start - onset) <= 0.3 and abs(end - offset) <= 0.3, (regions, truth)
    assert (df.speech_fraction > 0.8).all() and (df.coverage > 0).all()
    assert df.start_s.min() > 1.0  # the leading silence gives no clip


def test_overlapping_windows_equal_the_same_windows_alone(corpus, tiny_ckpt, tmp_path):
    """Hop < window interleaves the frame requests of neighbouring clips during one decode."""
    tiled, overlapped = tmp_path / "tiled.h5", tmp_path / "overlap.h5"
    run_cli("extract", corpus["vfr"], "-o", tiled, "--weights", tiny_ckpt, "--no-progress")
    run_cli("extract", corpus["vfr"], "-o", overlapped, "--weights", tiny_ckpt, "--hop-seconds", "0.5",
            "--no-progress")
    a = socialfeat.load_features(tiled, embeddings="all").set_index("start_s")
    b = socialfeat.load_features(overlapped, embeddings="all").set_index("start_s")
    assert list(b.index) == [0.5 * k for k in range(17)]  # up to the window reaching the end
    cols = [c for c in a.columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_allclose(b.loc[a.index, cols].to_numpy(), a[cols].to_numpy(), atol=1e-5)


@pytest.mark.parametrize("bad", [{"crop": "Face"}, {"faces": "every", "crop": "face"}, {"missing_audio": "silent"},
                                 {"engine": "dask"}, {"device": "gpu"}, {"batch_size": 0}, {"batch_size": -1},
                                 {"workers": -1}, {"video_timeout": 0}, {"faces": "all"}, {"require_face": True}])
def test_the_library_call_checks_what_the_cli_options_check(bad, corpus, tiny_ckpt, tmp_path):
    """From Python a misspelt choice ran as the default and was recorded as given."""
    from socialfeat.errors import UsageError
    from socialfeat.extract import extract
    with pytest.raises(UsageError):
        extract([corpus["short"]], tmp_path / "x.h5", weights=tiny_ckpt, progress=False, **bad)
    assert not (tmp_path / "x.h5").exists()


def test_the_library_call_takes_one_path_as_it_is(corpus, tiny_ckpt, tmp_path):
    from socialfeat.extract import extract
    for given in (str(corpus["short"]), corpus["short"]):
        out = tmp_path / f"{type(given).__name__}.h5"
        summary = extract(given, out, weights=tiny_ckpt, workers=0, progress=False)
        assert summary.n_videos == 1 and list(socialfeat.load_videos(out).path) == ["short.mp4"]


def test_load_functions_take_kinds_as_extract_does_and_refuse_foreign_files(corpus, tiny_ckpt, tmp_path):
    from socialfeat.errors import UsageError
    out = tmp_path / "kinds.h5"
    run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt, "--no-progress", "--embeddings",
            "joint,visual")
    both = socialfeat.load_features(out, embeddings="Joint, visual")
    assert [c for c in both if c.endswith("_000")] == ["joint_000", "visual_000"]
    assert socialfeat.load_features(out, embeddings=["visual", "joint", "joint"]).columns.equals(both.columns)
    assert socialfeat.load_features(out, embeddings="ALL").columns.equals(both.columns)
    for bad in (3, "jiont"):
        with pytest.raises(UsageError):
            socialfeat.load_features(out, embeddings=bad)
    foreign = tmp_path / "other.h5"
    import h5py
    with h5py.File(foreign, "w") as f:
        f["x"] = [1]
    for load in (socialfeat.load_features, socialfeat.load_videos, socialfeat.load_errors):
        with pytest.raises(UsageError, match="not one written by socialfeat"):
            load(foreign)
        with pytest.raises(FileNotFoundError):
            load(tmp_path / "missing.h5")
