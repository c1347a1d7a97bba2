"""A long recording shared among workers (parts on the span grid) gives the numbers of decoding it whole."""

from __future__ import annotations

import logging
import subprocess

import numpy as np
import pytest
from annotation_files import overlapping_segments
from media_factory import speech_wav, talking_video

import socialfeat.pipeline as pipeline
from socialfeat.demo import synthetic_video
from socialfeat.extract import extract
from socialfeat.media import AudioStream, probe
from socialfeat.pipeline import (
    PartDone,
    VideoDone,
    closing_items,
    damaged_packets,
    merge_parts,
)
from socialfeat.store import (
    Journal,
    VideoStatus,
    load_errors,
    load_features,
    load_videos,
)

SPAN = 4.0  # s: the tests' grid (30 s in use), so that short test media have many spans


def _audio_at(video, rate: int, out):
    """``video`` with its audio track re-encoded at ``rate`` Hz (decoded and resampled to 16 kHz)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-c:v", "copy", "-c:a", "aac", "-ac", "2",
                    "-ar", str(rate), str(out)], check=True)
    video.unlink()
    return out


@pytest.fixture(scope="module")
def long_and_short(tmp_path_factory):
    """A 40-s recording whose AAC track uses noise substitution (FFmpeg's encoder, as PyAV writes it: a
    decoder started at a part's first chunk draws other noise there than one that decoded everything
    before it; with audio chunks on the span grid both start anew at each chunk) and a short one."""
    folder = tmp_path_factory.mktemp("parts") / "videos"
    folder.mkdir()
    synthetic_video(folder / "long.mp4", 40.0, size="160x120", fps=25)
    talking_video(folder / "short.mp4", seconds=6.0, size="160x120")
    return folder


def _run(folder, out, ckpt, workers, **kw):
    extract([folder], out, weights=ckpt, device="cpu", workers=workers, batch_size=2, progress=False, **kw)
    return load_features(out, embeddings="all"), load_videos(out), load_errors(out)


def test_a_recording_shared_by_idle_workers_gives_the_same_output_as_decoding_it_whole(
        long_and_short, tiny_ckpt, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    whole = _run(long_and_short, tmp_path / "whole.h5", tiny_ckpt, workers=0)  # in this process, no parts
    with caplog.at_level(logging.DEBUG, logger="socialfeat.workers"):
        shared = _run(long_and_short, tmp_path / "shared.h5", tiny_ckpt, workers=3)
    cuts = [r.getMessage() for r in caplog.records if "go to another worker" in r.getMessage()]
    assert cuts and all(m.startswith("long.mp4") for m in cuts)  # the short video was never shared
    feats_whole, feats_shared = whole[0], shared[0]
    assert len(feats_whole) == 23 and feats_shared["clip_index"].tolist() == feats_whole["clip_index"].tolist()
    embeddings = [c for c in feats_whole.columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_array_equal(feats_shared[embeddings].to_numpy(), feats_whole[embeddings].to_numpy())
    facts = ["path", "status", "n_clips", "decoded_duration_s", "audio_duration_s", "audio_gap_s", "decode_errors",
             "has_audio", "duration_s"]
    assert shared[1][facts].to_dict("records") == whole[1][facts].to_dict("records")
    assert len(shared[2]) == len(whole[2]) == 0


def test_a_recording_with_overlapping_segments_shared_by_idle_workers_gives_the_output_of_decoding_it_whole(
        long_and_short, tiny_ckpt, tmp_path, monkeypatch, caplog):
    """Segments from a file are known before decoding: their pieces are decoded in the order of their
    starts, and a part holds those that start in its spans, so a long annotated recording is shared
    (and journalled in parts) like fixed windows; clip_index stays the place in the segments' order."""
    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    segments = overlapping_segments(tmp_path / "segments.csv")
    whole = _run(long_and_short, tmp_path / "whole.h5", tiny_ckpt, workers=0, segments=segments)
    with caplog.at_level(logging.DEBUG, logger="socialfeat.workers"):
        shared = _run(long_and_short, tmp_path / "shared.h5", tiny_ckpt, workers=3, segments=segments)
    assert any("go to another worker" in r.getMessage() and r.getMessage().startswith("long.mp4")
               for r in caplog.records)
    feats_whole, feats_shared = whole[0], shared[0]
    long = feats_whole[feats_whole["path"] == "long.mp4"]
    assert long["clip_index"].tolist() == list(range(len(long))) and len(long) > 15
    assert not long["start_s"].is_monotonic_increasing  # (overlapping segments: clip_index goes back in time)
    columns = [c for c in feats_whole.columns if c != "source_path"]
    assert feats_shared[columns].drop(columns=[c for c in columns if c.startswith(("joint_", "audio_", "visual_"))]
                                      ).to_dict("records") == \
        feats_whole[columns].drop(columns=[c for c in columns if c.startswith(("joint_", "audio_", "visual_"))]
                                  ).to_dict("records")
    embeddings = [c for c in columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_array_equal(feats_shared[embeddings].to_numpy(), feats_whole[embeddings].to_numpy())
    facts = ["path", "status", "n_clips", "decoded_duration_s", "audio_duration_s", "audio_gap_s", "decode_errors",
             "has_audio", "duration_s"]
    assert shared[1][facts].to_dict("records") == whole[1][facts].to_dict("records")
    notes = whole[2][whole[2]["stage"] == "segments"]["message"].tolist()
    assert len(notes) == 2 and "run past" in notes[0] + notes[1] and "start after" in notes[0] + notes[1]
    assert shared[2].to_dict("records") == whole[2].to_dict("records")


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_audio_decoded_in_chunks_is_the_same_from_any_chunk_on(tmp_path, rate):
    """A part starts its own decoder (and resampler) at its first chunk: its samples are those of a
    decode from the start, also where the source is resampled to 16 kHz."""
    speech = speech_wav(tmp_path / "speech.wav", 13.0)
    video = _audio_at(talking_video(tmp_path / "v.mp4", seconds=13.0, size="96x64", audio=speech), rate,
                      tmp_path / f"v{rate}.mp4")
    info = probe(video)
    whole = AudioStream(info, 16000, chunk_seconds=3.0)
    whole.ensure()
    samples = whole.window(0, whole.cursor)
    assert whole.decoded_samples() == len(samples) > 12 * 16000
    for k in (1, 2, 3):
        part = AudioStream(info, 16000, start=3.0 * k, chunk_seconds=3.0)
        part.ensure()
        got = part.window(48000 * k, part.cursor)
        np.testing.assert_array_equal(got, samples[48000 * k:48000 * k + len(got)])
        assert part.decoded_samples(k) == whole.decoded_samples(k)
    with pytest.raises(ValueError, match="grid"):
        AudioStream(info, 16000, start=1.0, chunk_seconds=3.0)


def _part(first, end, status="ok", clips=2, audio=32000, decoded=None, errors=(), failure="", audio_end=0):
    video = {"video_id": "ab", "path": "v.mp4", "status": status, "error": f"{status} here" if status != "ok" else "",
             "n_clips": clips, "duration_s": 12.0, "decoded_duration_s": decoded, "decode_errors": len(errors),
             "has_audio": audio > 0, "audio_duration_s": audio / 16000}
    rows = [{"video_id": "ab", "path": "v.mp4", "stage": "decode-video", "message": m} for m in errors]
    return VideoDone(0, video, rows, clips, failure, (first, end), audio, audio_end)


def test_merging_parts_adds_facts_up_and_keeps_the_worst_verdict():
    merged = merge_parts([_part(2, None, decoded=12.0, audio_end=10 * 16000), _part(0, 1, decoded=4.0, audio_end=4 * 16000),
                          _part(1, 2, decoded=8.0, audio_end=8 * 16000)], 16000)
    assert merged.video["status"] == "ok" and merged.failure == ""
    assert merged.n_clips == merged.video["n_clips"] == 6
    assert merged.video["decoded_duration_s"] == 12.0 and merged.video["audio_duration_s"] == 6.0
    assert merged.video["audio_gap_s"] == 2.0  # the audio ends 2 s before the picture (in the last part)
    # a part that stopped early, before the last: damaged (later parts went on), not truncated
    middle = merge_parts([_part(0, 1), _part(1, 2, "truncated", errors=["stopped"], failure="content"),
                          _part(2, None, decoded=12.0)], 16000)
    assert middle.video["status"] == VideoStatus.DAMAGED and middle.failure == "content"
    assert middle.video["decode_errors"] == 1 and [e["message"] for e in middle.errors] == ["stopped"]
    last = merge_parts([_part(0, 1), _part(1, None, "truncated", failure="content")], 16000)
    assert last.video["status"] == VideoStatus.TRUNCATED
    crashed = merge_parts([_part(0, 1, "damaged", failure="content"), _part(1, None, "error", clips=0,
                                                                            failure="crash")], 16000)
    assert crashed.video["status"] == VideoStatus.ERROR and crashed.failure == "crash"
    assert crashed.video["error"] == "error here"
    empty = merge_parts([_part(0, 1, clips=0), _part(1, None, clips=0)], 16000)
    assert empty.video["status"] == VideoStatus.NO_CLIPS and empty.errors[-1]["stage"] == "plan"


def test_damaged_packets_of_several_parts_make_one_row_as_decoding_the_video_whole_does():
    """Each part tells of the damaged packets it skipped; the video has one row with their sum (and
    none when its verdict is truncated: decoding it whole tells of damage by that verdict alone)."""
    def damaged(first, end, n, audio_lost=False):
        part = _part(first, end, "damaged", errors=[damaged_packets(n)], failure="content")
        part.video.update(decode_errors=n, error=f"decode-video: {damaged_packets(n)}")
        if audio_lost:
            part.errors.append({"video_id": "ab", "path": "v.mp4", "stage": "decode-audio", "message": "audio lost"})
        return part
    merged = merge_parts([damaged(0, 1, 1), damaged(1, 2, 2, audio_lost=True), _part(2, None, decoded=12.0)], 16000)
    assert merged.video["status"] == VideoStatus.DAMAGED and merged.video["decode_errors"] == 3
    assert merged.video["error"] == "decode-video: 3 damaged video packet(s) skipped"
    assert [(e["stage"], e["message"]) for e in merged.errors] == [
        ("decode-video", "3 damaged video packet(s) skipped"), ("decode-audio", "audio lost")]
    cut = merge_parts([damaged(0, 1, 1), _part(1, None, "truncated", errors=["video decoded for 5.00 s of 12.00 s"],
                                               failure="content")], 16000)
    assert cut.video["status"] == VideoStatus.TRUNCATED
    assert [e["message"] for e in cut.errors] == ["video decoded for 5.00 s of 12.00 s"]


def test_a_truncated_video_tells_its_own_extent_whichever_part_ends_where_the_data_end():
    """Data ending at 7.96 s of 20 s: split at 8 s, the part before ends within tolerance and the next holds
    nothing ('no decodable video frames after 8.00 s'); split at 4 s and 12 s, the middle part is cut short.
    Either way the video reads as decoding it whole writes it."""
    def part(first, end, status, decoded, message=None):
        p = _part(first, end, status, decoded=decoded, errors=[message] if message else (), failure="content"
                  if status != "ok" else "")
        p.video.update(decode_errors=0, error=f"decode-video: {message}" if message else "")
        p.video_duration = 20.0
        return p
    expected = "video decoded for 7.96 s of 20.00 s (truncated or damaged file)"
    at_8 = merge_parts([part(0, 2, "ok", 7.96),
                        part(2, None, "truncated", 0.0, "no decodable video frames after 8.00 s of 20.00 s "
                             "(truncated or damaged file)")], 16000)
    at_4_12 = merge_parts([part(0, 1, "ok", 4.0), part(1, 3, "truncated", 7.96, "video decoded for 7.96 s of "
                                                       "12.00 s (truncated or damaged file)"),
                           part(3, None, "truncated", 0.0, "no decodable video frames after 12.00 s of 20.00 s "
                                "(truncated or damaged file)")], 16000)
    for merged in (at_8, at_4_12):
        assert merged.video["status"] == VideoStatus.TRUNCATED
        assert merged.video["error"] == f"decode-video: {expected}"
        assert [(e["stage"], e["message"]) for e in merged.errors] == [("decode-video", expected)]


def test_a_video_failed_in_one_part_is_closed_after_the_part_that_finished_last_is_passed_on():
    """Whichever part finishes last, its record reaches the journal as the others' did when the video
    failed elsewhere (the retry resumes from it); a video that did not fail is closed by its merged record."""
    failed = _part(1, 2, "error", clips=0, failure="crash")
    for parts in ([_part(0, 1), failed], [failed, _part(0, 1)]):
        items = closing_items(parts, 16000)
        assert [type(i) for i in items] == [PartDone, VideoDone] and items[0].done is parts[-1]
        assert items[1].video["status"] == VideoStatus.ERROR
    fine = closing_items([_part(1, None, decoded=8.0), _part(0, 1, decoded=4.0)], 16000)
    assert [type(i) for i in fine] == [VideoDone] and fine[0].video["status"] == VideoStatus.OK


def test_a_worker_killed_on_a_part_makes_the_video_an_error_row_and_a_rerun_resumes_from_its_finished_parts(
        long_and_short, tiny_ckpt, tmp_path, monkeypatch, caplog):
    """The decoding worker of a part (not the first) dies: the recording becomes one error row (its other
    parts' clips dropped, as for a video that failed whole), the short video is unharmed, and a rerun
    decodes only the parts that did not finish and gives the numbers of decoding it whole."""
    import os
    import signal
    import time

    monkeypatch.setattr(pipeline, "SPAN_SECONDS", SPAN)
    whole = _run(long_and_short, tmp_path / "whole.h5", tiny_ckpt, workers=0)
    clips_in_order = pipeline.VideoRun.clips_in_order

    def dies_on_later_parts(self, info, plan):
        if self.first > 0:
            os.kill(os.getpid(), signal.SIGKILL)
        yield from clips_in_order(self, info, plan)
        time.sleep(2)  # the first part finishes after the others were reported dead: its record closes the video

    monkeypatch.setattr(pipeline.VideoRun, "clips_in_order", dies_on_later_parts)  # (the workers fork with it)
    out = tmp_path / "shared.h5"
    feats, videos, errors = _run(long_and_short, out, tiny_ckpt, workers=3)
    row = videos.set_index("path").loc["long.mp4"]
    assert row["status"] == "error" and "killed by SIGKILL" in row["error"] and "the part from" in row["error"]
    assert set(feats["path"]) == {"short.mp4"} and videos.set_index("path").loc["short.mp4", "status"] == "ok"
    assert set(errors["path"]) == {"long.mp4"} and set(errors["stage"]) == {"worker"}  # (a row per part killed)
    finished = Journal(out).span_paths(row["video_id"])
    assert [p.name.split(".span-")[1].split("-")[0] for p in finished] == ["0"]  # the first part's file stays
    monkeypatch.setattr(pipeline.VideoRun, "clips_in_order", clips_in_order)
    with caplog.at_level(logging.INFO, logger="socialfeat.extract"):
        feats, videos, _ = _run(long_and_short, out, tiny_ckpt, workers=3)  # the same output file: resumed
    assert "resuming 1 recording(s) part-way" in caplog.text
    assert videos["status"].tolist() == ["ok", "ok"]
    assert not Journal(out).span_paths(row["video_id"])
    embeddings = [c for c in whole[0].columns if c.startswith(("joint_", "audio_", "visual_"))]
    np.testing.assert_array_equal(feats[embeddings].to_numpy(), whole[0][embeddings].to_numpy())
