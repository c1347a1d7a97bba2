"""Face-centred clips (``--crop face``, ``--faces all``) on videos with the astronaut face at known positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import run_cli
from media_factory import ASTRONAUT, face_video
from PIL import Image

import socialfeat
from socialfeat.faces import FaceDetector

FPS = 25


def x_of(t: float) -> float:
    return 180 + 120 * math.sin(2 * math.pi * t / 6)


def y_of(t: float) -> float:
    return 100 + 40 * math.cos(2 * math.pi * t / 4)


@pytest.fixture(scope="module")
def face_offset():
    """Where the detector finds the face inside the composited patch (centre offset, size)."""
    canvas = np.full((360, 480, 3), (0x44, 0x55, 0x66), np.uint8)
    patch = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    canvas[100:100 + patch.shape[0], 150:150 + patch.shape[1]] = patch
    (box,) = FaceDetector()(canvas)
    cx, cy = box.center
    return cx - 150, cy - 100, max(box.w, box.h)


def centers(boxes: str) -> list[tuple[float, float, float]]:
    out = []
    for part in boxes.split(";"):
        x, y, w, h = map(float, part.split(","))
        out.append((x + w / 2, y + h / 2, w))
    return out


def test_moving_face_is_cropped_on_every_frame(tiny_ckpt, tmp_path, face_offset):
    video = face_video(tmp_path / "one_face.mp4", [("180+120*sin(2*PI*t/6)", "100+40*cos(2*PI*t/4)")])
    out = tmp_path / "face.h5"
    proc = run_cli("extract", video, "-o", out, "--weights", tiny_ckpt, "--crop", "face", "--csv", tmp_path / "csv",
                   "--no-progress")
    assert "Warning" not in proc.stderr, proc.stderr  # (torch warned on every face crop)
    df = socialfeat.load_features(out, embeddings="visual")
    assert len(df) == 3 and (df.track == 0).all() and (df.face_fraction == 1.0).all()
    dx, dy, size = face_offset
    for row in df.itertuples():
        times = row.start_s + np.arange(8) * row.window_s / 8
        for t, (cx, cy, side) in zip(times, centers(row.face_boxes)):
            shown = math.floor(t * FPS + 1e-6) / FPS  # the frame on screen at t
            assert abs(cx - (x_of(shown) + dx)) <= 12 and abs(cy - (y_of(shown) + dy)) <= 12, (t, cx, cy)
            assert side == pytest.approx(1.8 * size, rel=0.25)
    assert np.isfinite(df.filter(like="visual_").to_numpy()).all()
    assert "face_boxes" in open(tmp_path / "csv" / "clips.csv").readline()


def test_two_faces_give_two_stable_tracks(tiny_ckpt, tmp_path):
    video = face_video(tmp_path / "two_faces.mp4", [("30+20*sin(2*PI*t/3)", "110"), ("320", "100+30*sin(2*PI*t/5)")])
    out = tmp_path / "two.h5"
    run_cli("extract", video, "-o", out, "--weights", tiny_ckpt, "--crop", "face", "--faces", "all", "--no-progress")
    df = socialfeat.load_features(out, embeddings="joint")
    assert list(df.groupby("clip_index").track.apply(list)) == [[0, 1]] * 3  # same ids in every clip
    for row in df.itertuples():
        xs = [cx for cx, _, _ in centers(row.face_boxes)]
        assert (max(xs) < 200) if row.track == 0 else (min(xs) > 300)  # track 0 is the left person throughout
    a = df[(df.clip_index == 0) & (df.track == 0)].filter(like="joint_").to_numpy()
    b = df[(df.clip_index == 0) & (df.track == 1)].filter(like="joint_").to_numpy()
    assert not np.allclose(a, b)  # different crops, different embeddings; same audio for both rows


def test_clips_without_faces_are_flagged(tiny_ckpt, tmp_path):
    video = face_video(tmp_path / "empty_room.mp4", [])
    out = tmp_path / "none.h5"
    run_cli("extract", video, "-o", out, "--weights", tiny_ckpt, "--crop", "face", "--no-progress")
    df = socialfeat.load_features(out, embeddings="joint")
    assert (df.track == -1).all() and (df.face_fraction == 0).all() and df.qc_flags.str.contains("no_face").all()
    assert np.isfinite(df.filter(like="joint_").to_numpy()).all()  # fell back to the whole frame
    out2 = tmp_path / "required.h5"
    run_cli("extract", video, "-o", out2, "--weights", tiny_ckpt, "--crop", "face", "--require-face", "--no-progress")
    df2 = socialfeat.load_features(out2, embeddings="joint")
    assert df2.qc_flags.str.contains("skipped").all() and df2.filter(like="joint_").isna().all().all()
