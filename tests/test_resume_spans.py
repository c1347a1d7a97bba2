"""A run cut off inside a long recording keeps the recording's finished parts and resumes after
them (a recording of hours must not start again from its beginning at every SLURM requeue)."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from annotation_files import overlapping_segments
from conftest import SOCIALFEAT, run_cli
from media_factory import talking_video

import socialfeat.pipeline as pipeline
import socialfeat.workers as workers_module
from socialfeat.demo import synthetic_video
from socialfeat.encoder import BatchEncoder
from socialfeat.extract import extract
from socialfeat.pipeline import spans_left
from socialfeat.store import Journal, load_features, load_videos

SPAN = 4.0  # s: the tests' grid (30 s in use)
CHECKPOINT = 2  # spans per part (20 in use): parts of 8 s


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume") / "videos"
    folder.mkdir()
    synthetic_video(folder / "long.mp4", 40.0, size="160x120", fps=25)
    talking_video(folder / "short.mp4", seconds=6.0, size="160x120")
    return folder


def _run(folder, out, ckpt, workers, **kw):
    extract([folder], out, weights=ckpt, device="cpu", workers=workers, batch_size=2, progress=False, **kw)
    return load_features(out, embeddings="all"), load_videos(out)


def _counting_encoder(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count the clips handed to the model; with ``stop_after``, Ctrl-C once that many were (the
    KeyboardInterrupt a terminal or SLURM's signal handler raises in the model's process)."""
    seen = [0]
    add = BatchEncoder.add

    def counting_add(self, item):
        seen[0] += 1
        if stop_after is not None and seen[0] > stop_after:
            raise KeyboardInterrupt
        return add(self, item)

    monkeypatch.setattr(BatchEncoder, "add", counting_add)
    return seen


def test_spans_left_are_the_gaps_between_finished_parts():
    assert spans_left([]) == [(0, None)]
    assert spans_left([(0, 20)]) == [(20, None)]
    assert spans_left([(20, 40), (0, 20)]) == [(40, None)]
    assert spans_left([(0, 20), (40, 60)]) == [(20, 40), (60, None)]
    assert spans_left([(10, None)]) == [(0, 10)]
    assert spans_left([(0, 20), (20, None)]) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_cut_off_inside_a_long_recording_resumes_after_its_finished_parts(
        recordings, tiny_ckpt, tmp_path, monkeypatch, caplog, workers):
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    whole = _run(recordings, tmp_path / "whole.h5", tiny_ckpt, workers=0)  # 10 spans < 20: one part
    assert not Journal(tmp_path / "whole.h5").span_paths(whole[1]["video_id"][0])

    monkeypatch.setattr(workers_module, "CHECKPOINT_SPANS", CHECKPOINT)
    out = tmp_path / "cut.h5"
    with monkeypatch.context() as m:
        _counting_encoder(m, stop_after=13)
        with pytest.raises(KeyboardInterrupt):
            _run(recordings, out, tiny_ckpt, workers=workers)
    long_id = whole[1].set_index("path").loc["long.mp4", "video_id"]
    kept = Journal(out).span_paths(long_id)
    assert kept, "no finished part of the long recording was journalled"
    assert not out.exists()

    seen = _counting_encoder(monkeypatch)
    with caplog.at_level(logging.INFO, logger="socialfeat.extract"):
        resumed = _run(recordings, out, tiny_ckpt, workers=workers)
    assert any("part-way" in r.getMessage() for r in caplog.records)
    n_total = len(whole[0])
    assert seen[0] <= n_total - 4 * len(kept)  # each kept part (8 s, 2-s clips) is not decoded again

    embeddings = [c for c in whole[0].columns if c.startswith(("joint_", "audio_", "visual_"))]
    key = ["path", "clip_index"]
    a, b = whole[0].sort_values(key), resumed[0].sort_values(key)
    assert a[key].to_dict("records") == b[key].to_dict("records")
    np.testing.assert_array_equal(b[embeddings].to_numpy(), a[embeddings].to_numpy())
    facts = ["path", "status", "n_clips", "decoded_duration_s", "audio_duration_s", "audio_gap_s", "decode_errors",
             "has_audio", "duration_s"]
    assert resumed[1].sort_values("path")[facts].to_dict("records") == \
        whole[1].sort_values("path")[facts].to_dict("records")
    assert not Journal(out).span_paths(long_id)  # the whole video is journalled: its parts are gone


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_with_overlapping_segments_cut_off_inside_a_long_recording_resumes_after_its_finished_parts(
        recordings, tiny_ckpt, tmp_path, monkeypatch, workers):
    """An annotated session (segments from a file, planned before decoding) is journalled in parts too."""
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    segments = overlapping_segments(tmp_path / "segments.csv")
    whole = _run(recordings, tmp_path / "whole.h5", tiny_ckpt, workers=0, segments=segments)
    monkeypatch.setattr(workers_module, "CHECKPOINT_SPANS", CHECKPOINT)
    out = tmp_path / "cut.h5"
    with monkeypatch.context() as m:
        _counting_encoder(m, stop_after=13)
        with pytest.raises(KeyboardInterrupt):
            _run(recordings, out, tiny_ckpt, workers=workers, segments=segments)
    long_id = whole[1].set_index("path").loc["long.mp4", "video_id"]
    kept = Journal(out).span_paths(long_id)
    assert kept, "no finished part of the long recording was journalled"

    seen = _counting_encoder(monkeypatch)
    resumed = _run(recordings, out, tiny_ckpt, workers=workers, segments=segments)
    assert seen[0] < len(whole[0])
    key = ["path", "clip_index"]
    a, b = whole[0].sort_values(key), resumed[0].sort_values(key)
    columns = [c for c in a.columns if c != "source_path"]
    assert b[columns].to_dict("records") == a[columns].to_dict("records")  # (labels, segment rows, vectors)
    facts = ["path", "status", "n_clips", "decoded_duration_s", "audio_duration_s", "audio_gap_s", "decode_errors",
             "has_audio", "duration_s"]
    assert resumed[1].sort_values("path")[facts].to_dict("records") == \
        whole[1].sort_values("path")[facts].to_dict("records")
    assert not Journal(out).span_paths(long_id)


def test_parts_journalled_under_other_settings_are_not_reused(recordings, tiny_ckpt, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    monkeypatch.setattr(workers_module, "CHECKPOINT_SPANS", CHECKPOINT)
    out = tmp_path / "cut.h5"
    with monkeypatch.context() as m:
        _counting_encoder(m, stop_after=13)
        with pytest.raises(KeyboardInterrupt):
            _run(recordings, out, tiny_ckpt, workers=0)
    seen = _counting_encoder(monkeypatch)
    with caplog.at_level(logging.INFO, logger="socialfeat.extract"):
        feats, videos = _run(recordings, out, tiny_ckpt, workers=0, clip_seconds=4.0)
    assert not any("part-way" in r.getMessage() for r in caplog.records)
    assert seen[0] == len(feats) > 10  # every clip of the new plan computed (4-s clips)
    assert set(videos["status"]) == {"ok"}
    assert not list(Journal(out).dir.glob("*.span-*"))


def test_the_command_killed_by_sigterm_inside_a_22_minute_recording_resumes_from_its_first_10_minutes(
        tmp_path, tiny_ckpt):
    """The real thing: ``socialfeat extract`` as a cluster job at its time limit (SIGTERM once the first
    10-minute part is journalled), run again: the first part is taken from the journal, the rest decoded,
    and the output equals that of a run never interrupted."""
    folder = tmp_path / "videos"
    synthetic_video(folder / "session.mp4", 22 * 60.0, size="96x64", fps=5)
    reference = tmp_path / "reference.h5"
    run_cli("extract", folder, "-o", reference, "--weights", tiny_ckpt, "--device", "cpu")

    out = tmp_path / "cut.h5"
    args = [str(SOCIALFEAT), "extract", str(folder), "-o", str(out), "--weights", str(tiny_ckpt), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(Journal(out).dir.glob("*.span-0-20.h5")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "every finished 10-minute part of a long one, is kept" in stderr
    assert not out.exists()

    again = run_cli("extract", folder, "-o", out, "--weights", tiny_ckpt, "--device", "cpu")
    assert "1 resumed part-way" in again.stderr
    a, b = load_features(reference, embeddings="all"), load_features(out, embeddings="all")
    embeddings = [c for c in a.columns if c.startswith(("joint_", "audio_", "visual_"))]
    assert len(a) == len(b) == 660 and b["clip_index"].tolist() == a["clip_index"].tolist()
    np.testing.assert_array_equal(b[embeddings].to_numpy(), a[embeddings].to_numpy())
    va, vb = load_videos(reference), load_videos(out)
    same = [c for c in va.columns if c != "source_path"]
    assert vb[same].to_dict("records") == va[same].to_dict("records")
    assert not list(Journal(out).dir.glob("*.span-*"))


def test_a_recording_resumed_from_a_moved_folder_names_its_file_where_it_is_now(
        recordings, tiny_ckpt, tmp_path, monkeypatch):
    """A requeued job that finds the corpus copied elsewhere (same relative paths, sizes, mtimes) resumes
    it, and ``source_path`` names the file read now, as for videos reused whole, not the old copy."""
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    monkeypatch.setattr(workers_module, "CHECKPOINT_SPANS", CHECKPOINT)
    before, after = tmp_path / "scratch-a" / "videos", tmp_path / "scratch-b" / "videos"
    shutil.copytree(recordings, before)  # (copy2: mtimes kept)
    out = tmp_path / "cut.h5"
    with monkeypatch.context() as m:
        _counting_encoder(m, stop_after=13)
        with pytest.raises(KeyboardInterrupt):
            _run(before, out, tiny_ckpt, workers=0)
    assert list(Journal(out).dir.glob("*.span-*"))
    shutil.copytree(before, after)
    shutil.rmtree(before)
    _, videos = _run(after, out, tiny_ckpt, workers=0)
    assert videos.set_index("path")["source_path"].to_dict() == \
        {"long.mp4": str(after / "long.mp4"), "short.mp4": str(after / "short.mp4")}


def test_the_resume_message_counts_a_journalled_last_part_up_to_where_it_ended(tmp_path, caplog):
    """A shared recording's last part ([first, end of the file)) may be journalled before the parts
    ahead of it: it counts up to its decoded end, not as a negative stretch."""
    from types import SimpleNamespace

    from socialfeat.extract import resume_parts, span_record
    from socialfeat.pipeline import VideoDone
    from socialfeat.store import SpanResult

    journal = Journal(tmp_path / "out.h5")
    video = {"video_id": "0123456789abcdef", "path": "long.mp4", "source_path": "/old/long.mp4", "status": "ok",
             "error": "", "n_clips": 0}
    for span, decoded in (((0, 20), 600.0), ((40, None), 1500.0)):
        done = VideoDone(0, dict(video, decoded_duration_s=decoded), [], 0, "", span)
        journal.write_span(video["video_id"], SpanResult(span_record(done), [], {}, {}), "fp")
    ref = SimpleNamespace(video_id=video["video_id"], path=tmp_path / "long.mp4")
    with caplog.at_level(logging.INFO, logger="socialfeat.extract"):
        resumed, _ = resume_parts([(0, ref, None)], journal, {0: "fp"})
    assert resumed[0][1] == [(20, 40)]
    assert "1 recording(s) part-way: 15 min of recording already done" in caplog.text
