"""``socialfeat extract`` end to end: the real CLI in a subprocess on generated media, results re-read
from HDF5/CSV."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SOCIALFEAT, run_cli
from io_helpers import ffmpeg_audio, ffmpeg_frame, ffprobe_frame_times
from processes import freeze, kill

import socialfeat
from socialfeat.models import load_model
from socialfeat.preprocess import fbank, frames_tensor, video_input

BROKEN = {"empty.mp4": ("open", "empty file"), "notes.mp4": ("open", "not a readable media file"),
          "truncated_nomoov.mp4": ("open", "not a readable media file"),
          "audio_only.mp4": ("probe", "no video stream")}


@pytest.fixture(scope="module")
def clean_run(corpus, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "feats.h5"
    proc = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--workers", "2",
                   "--batch-size", "5", "--csv", out.parent / "csv")
    return out, proc


def test_exit_status_and_summary(clean_run):
    out, proc = clean_run
    assert proc.returncode == 3  # finished, but some inputs were bad
    assert "13 videos" in proc.stderr
    for name, (stage, _) in BROKEN.items():
        assert f"{name}: {stage}:" in proc.stderr  # one warning line per bad file


def test_videos_table(clean_run, corpus):
    out, _ = clean_run
    videos = socialfeat.load_videos(out).set_index("path")
    expected_paths = {"talk.mp4", "nested/interview two.mkv", "nested/deeper/séance_ü.webm", "noaudio.mp4",
                      "vfr.mp4", "rotated90.mp4", "short.mp4", "truncated.mp4", "truncated_nomoov.mp4",
                      "corrupt_mid.mp4", "empty.mp4", "notes.mp4", "audio_only.mp4"}
    assert set(videos.index) == expected_paths  # .m4a is not a video extension: not taken from the folder
    assert list(videos.index) == sorted(expected_paths)  # stable order
    for path, row in videos.iterrows():
        assert row.video_id == hashlib.sha1(path.encode()).hexdigest()[:16]
    for ok in ("talk.mp4", "nested/interview two.mkv", "nested/deeper/séance_ü.webm", "vfr.mp4", "short.mp4"):
        assert videos.loc[ok, "status"] == "ok" and videos.loc[ok, "has_audio"], ok
    assert videos.loc["noaudio.mp4", "status"] == "ok" and not videos.loc["noaudio.mp4", "has_audio"]
    assert videos.loc["truncated.mp4", "status"] == "truncated"
    assert videos.loc["corrupt_mid.mp4", "status"] == "damaged"
    assert (videos.loc["rotated90.mp4", ["width", "height", "rotation"]] == [240, 320, 90]).all()
    for name in BROKEN:
        assert videos.loc[name, "status"] == "error" and videos.loc[name, "n_clips"] == 0


def test_column_types_do_not_depend_on_failed_videos(clean_run, corpus, tiny_ckpt, tmp_path):
    """A video that failed before its size was known leaves width & co. missing: they stay integers
    (-1 in the file, <NA> in pandas, empty in the CSV), as in a run without failures."""
    clean = tmp_path / "clean.h5"
    run_cli("extract", corpus["talk"], "-o", clean, "--weights", tiny_ckpt, "--no-progress")
    with_failures, _ = clean_run
    for table in ("videos", "clips"):
        with h5py.File(clean, "r") as a, h5py.File(with_failures, "r") as b:
            assert {c: a[table][c].dtype for c in a[table]} == {c: b[table][c].dtype for c in a[table]}, table
    videos = socialfeat.load_videos(with_failures).set_index("path")
    assert str(videos.width.dtype) == "Int64" and videos.loc["empty.mp4", "width"] is pd.NA
    assert videos.loc["talk.mp4", "width"] == 320 and pd.api.types.is_integer_dtype(socialfeat.load_videos(clean).width)
    csv = pd.read_csv(with_failures.parent / "csv" / "videos.csv").set_index("path")
    assert csv.loc["talk.mp4", "width"] == 320 and pd.isna(csv.loc["empty.mp4", "width"])
    with h5py.File(with_failures, "r") as f:
        assert f["videos/width"].dtype == np.int64 and -1 in f["videos/width"][()]


def test_errors_table(clean_run):
    errors = socialfeat.load_errors(clean_run[0])
    for name, (stage, needle) in BROKEN.items():
        row = errors[errors.path == name]
        assert len(row) == 1 and row.stage.iloc[0] == stage and needle in row.message.iloc[0]
    trunc = errors[errors.path == "truncated.mp4"]
    assert "decode-video" in set(trunc.stage) and trunc.message.str.contains("decoded for").any()
    assert (errors.message.str.count("\n") == 0).all()


def test_clip_counts_timestamps_and_flags(clean_run):
    df = socialfeat.load_features(clean_run[0], embeddings="all")
    talk = df[df.path == "talk.mp4"]
    assert list(talk.start_s) == [0, 2, 4, 6, 8] and list(talk.end_s) == [2, 4, 6, 8, 10]  # tiny model: 2-s windows
    assert (talk.coverage == 1).all() and (talk.n_frames == 8).all() and (talk.qc_flags == "").all()
    short = df[df.path == "short.mp4"]
    assert list(short.start_s) == [0, 2] and short.coverage.iloc[1] == pytest.approx(0.5)
    assert short.qc_flags.iloc[1] == "partial_window;frames_repeated" and short.n_frames_padded.iloc[1] == 4
    assert len(df[df.path == "nested/deeper/séance_ü.webm"]) == 3
    trunc = df[df.path == "truncated.mp4"]
    assert 0 < len(trunc) < 5 and trunc.end_s.max() < 6  # only what could be decoded
    emb_cols = [c for c in df if c.startswith(("joint_", "audio_", "visual_"))]
    assert len(emb_cols) == 3 * 64
    with_audio = df[df.has_audio]
    assert np.isfinite(with_audio[emb_cols].to_numpy()).all()
    noaudio = df[df.path == "noaudio.mp4"]
    assert noaudio.filter(like="joint_").isna().all().all() and noaudio.filter(like="audio_").isna().all().all()
    assert np.isfinite(noaudio.filter(like="visual_").to_numpy()).all()
    assert (noaudio.qc_flags == "no_audio").all()


def test_embeddings_equal_direct_encode(clean_run, corpus, tiny_ckpt):
    """Clip 2 of talk.mp4 rebuilt independently: frames and audio cut by ffmpeg's command line."""
    df = socialfeat.load_features(clean_run[0], embeddings="all")
    row = df[(df.path == "talk.mp4") & (df.clip_index == 2)].iloc[0]
    model = load_model(tiny_ckpt)
    spec = model.info.preprocess
    pts = ffprobe_frame_times(corpus["talk"])
    idx = [int(np.flatnonzero(pts <= t + 1e-6).max()) for t in spec.frame_times(row.start_s, row.window_s)]
    frames = np.stack([ffmpeg_frame(corpus["talk"], i, 320, 240) for i in idx])
    video = video_input(frames_tensor(frames, spec), spec)[None]
    audio = fbank(torch.from_numpy(ffmpeg_audio(corpus["talk"], row.start_s, row.end_s - row.start_s)),
                  16000, spec)[None]
    with torch.no_grad():
        enc = model.encode(audio, video)
    for kind in ("joint", "audio", "visual"):
        got = row.filter(like=f"{kind}_").to_numpy(np.float32)
        np.testing.assert_allclose(got, getattr(enc, kind)[0].numpy(), atol=2e-4, err_msg=kind)


def test_csv_export(clean_run):
    out, _ = clean_run
    clips = pd.read_csv(out.parent / "csv" / "clips.csv")
    assert len(clips) == socialfeat.load_features(out).shape[0]
    assert not any(c.startswith("joint_") for c in clips)  # embeddings only on request
    errors = pd.read_csv(out.parent / "csv" / "errors.csv")
    assert set(BROKEN) <= set(errors.path)


def test_provenance_attributes(clean_run, tiny_ckpt):
    with h5py.File(clean_run[0]) as f:
        a = f.attrs
        assert a["socialfeat_version"] == socialfeat.__version__
        assert a["weights_sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
        assert json.loads(a["preprocess"])["family"] == "social-mae"
        assert "extract" in a["command_line"] and a["started_at"] <= a["finished_at"]
        assert f["embeddings/joint"].shape == (a["n_clips"], 64) and f["embeddings/joint"].dtype == np.float32
    info = run_cli("info", clean_run[0])
    assert "clips: " in info.stdout and "empty.mp4: open: empty file" in info.stdout


def _table_data(path, ignore_attrs=()):
    """Everything in the file except run timestamps, the command line and ``ignore_attrs``."""
    skip = {"started_at", "finished_at", "command_line", *ignore_attrs}
    with h5py.File(path) as f:
        data = {}
        f.visititems(lambda name, obj: data.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        attrs = {k: v for k, v in f.attrs.items() if k not in skip}
    return data, attrs


def assert_same_output(a, b, atol=0.0, ignore_attrs=()):
    da, aa = _table_data(a, ignore_attrs)
    db, ab = _table_data(b, ignore_attrs)
    assert set(da) == set(db)
    for k in da:
        if da[k].dtype.kind == "f":
            np.testing.assert_allclose(da[k], db[k], atol=atol, rtol=0, equal_nan=True, err_msg=k)
        else:
            assert np.array_equal(da[k], db[k]), k
    assert {k: str(v) for k, v in aa.items()} == {k: str(v) for k, v in ab.items()}


def test_batch_size_and_workers_do_not_change_results(clean_run, corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "b1.h5"
    run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--workers", "0", "--batch-size", "1",
            "--no-progress")
    assert_same_output(clean_run[0], out, atol=1e-5)


def test_kill_and_resume_equals_clean_run(clean_run, corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "resumed.h5"
    args = [str(SOCIALFEAT), "extract", str(corpus["root"]), "-o", str(out), "--weights", str(tiny_ckpt),
            "--workers", "0", "--batch-size", "2", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "resumed.h5.parts"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.h5"))) < 3:  # an event, not a duration
        time.sleep(0.01)
    freeze(proc.pid)  # nothing more is written between this count and the kill
    kill(proc.pid)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed"
    n_done = len(list(parts.glob("*.h5")))
    assert 3 <= n_done < 13
    resumed = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--workers", "2",
                      "--batch-size", "5", "--no-progress")
    assert f"({n_done} reused" in resumed.stderr
    assert_same_output(clean_run[0], out, atol=1e-5)
    # a changed input is processed again; unchanged ones are reused
    rerun = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--no-progress")
    assert "(13 reused" in rerun.stderr
    os.utime(corpus["short"], None)
    rerun = run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--no-progress")
    assert "(12 reused" in rerun.stderr


def test_segments_missing_audio_silence_and_predictions(corpus, tiny_ft_ckpt, tmp_path):
    seg = tmp_path / "segments.csv"
    seg.write_text("video,start,end,speaker,turn\n"
                   "talk.mp4,0.5,2.0,interviewer,1\n"
                   "talk.mp4,2.5,7.0,participant,2\n"
                   "noaudio.mp4,1,3,participant,3\n")
    out = tmp_path / "seg.csv"
    proc = run_cli("extract", corpus["talk"], corpus["noaudio"], corpus["short"], "-o", out,
                   "--weights", tiny_ft_ckpt, "--segments", seg, "--missing-audio", "silence", "--no-progress")
    assert proc.returncode == 3  # short.mp4 has no segments: reported, not silently dropped
    df = pd.read_csv(out)
    talk = df[df.path == "talk.mp4"]
    # the 4.5-s segment is cut into three equal pieces that fit the 2-s window
    assert list(zip(talk.start_s, talk.end_s)) == [(0.5, 2.0), (2.5, 4.0), (4.0, 5.5), (5.5, 7.0)]
    assert list(talk.speaker) == ["interviewer", "participant", "participant", "participant"]
    assert list(talk.turn) == [1, 2, 2, 2] and list(talk.segment_index) == [0, 1, 1, 1]
    probs = df[["emotion_calm", "emotion_happy", "emotion_angry"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)  # silence embedded: predictions everywhere
    noaudio = df[df.path == "noaudio.mp4"]
    assert noaudio.qc_flags.str.contains("silence_embedded").all() and noaudio.joint_000.notna().all()
    assert {"audio_000", "visual_063"} <= set(df.columns)
    with h5py.File(str(out) + ".h5") as f:
        labels = [x.decode() if isinstance(x, bytes) else x for x in f["predictions/emotion"].attrs["label_names"]]
        assert labels == ["calm", "happy", "angry"]
    errors = socialfeat.load_errors(str(out) + ".h5")
    assert ((errors.path == "short.mp4") & (errors.stage == "plan")).any()
