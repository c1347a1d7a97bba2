"""Clips lent through shared slots (the GPU hand-over) carry exactly what the workers decoded."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

import socialfeat.extract as extract_module
from socialfeat.handover import SharedSlots, slot_bytes
from socialfeat.models import load_model
from socialfeat.pipeline import RAW_FRAMES_MAX_PIXELS, ClipItem, PlanSettings, VideoDone
from socialfeat.walk import find_videos
from socialfeat.workers import PREFETCH, WorkerPool, in_process_items


def _clips(items, copy: bool) -> dict[tuple[str, int], tuple]:
    """Each clip's tensors by (video, clip index), copied as the consumer must; and the videos' records."""
    clips, done = {}, {}
    for item in items:
        if isinstance(item, ClipItem):
            if copy:  # a consumer slower than the workers: a slot given back too early would be overwritten
                time.sleep(0.01)
            take = (lambda x: None if x is None else x.clone()) if copy else (lambda x: x)
            clips[item.clip["path"], item.clip["clip_index"]] = (take(item.audio), take(item.video))
        else:
            assert isinstance(item, VideoDone)
            done[item.video["path"]] = item.video["status"]
    return clips, done


def test_lent_clips_equal_the_clips_decoded_here(corpus, tiny_ckpt):
    spec = load_model(tiny_ckpt).info.preprocess
    refs = find_videos([corpus["root"]], include=("*.mp4",))
    jobs = [(i, r, None) for i, r in enumerate(refs)]
    for raw, precision in ((True, "bf16"), (False, "fp32")):
        plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=1.0, missing_audio="nan",
                            precision=precision, raw_frames=raw)  # hop 1 s: many clips per video, slots reused
        expected, expected_done = _clips(in_process_items(jobs, spec, plan), copy=False)
        pool = WorkerPool(jobs, spec, plan, n_workers=2, lend_tensors=True)
        got, done = _clips(pool, copy=True)
        assert pool.slots is not None and done == expected_done
        assert len(got) == len(expected) > 4 * PREFETCH
        for key, (audio, video) in expected.items():
            assert torch.equal(got[key][1], video), key
            assert (audio is None and got[key][0] is None) or torch.equal(got[key][0], audio), key
        assert any(v.dtype == (torch.uint8 if raw else torch.float32) for _, v in got.values())


def test_a_slot_holds_the_largest_clip_that_is_handed_over_raw(tiny_ckpt):
    spec = load_model(tiny_ckpt).info.preprocess
    slots = SharedSlots(1, 2, slot_bytes(spec, RAW_FRAMES_MAX_PIXELS))
    w, h = 1280, 720
    assert w * h <= RAW_FRAMES_MAX_PIXELS
    video = torch.randint(0, 255, (spec.num_frames, h, w, 3), dtype=torch.uint8)
    audio = torch.randn(spec.target_length, spec.num_mel_bins)
    placed = slots.put([audio, video], slots.slot_offset(0, 1))
    assert placed is not None
    assert torch.equal(slots.view(placed[0]), audio) and torch.equal(slots.view(placed[1]), video)
    assert slots.put([torch.zeros(slots.size + 1, dtype=torch.uint8)], 0) is None  # too large: travels as it is


def test_the_longest_recordings_are_decoded_first(tmp_path):
    """A long recording started last would finish alone while the other workers idle."""
    from socialfeat.extract import reuse_finished
    from socialfeat.store import Journal
    from socialfeat.walk import VideoRef

    sizes = {"a.mp4": 10, "b.mp4": 300, "c.mp4": 20, "d.mp4": 300}
    for name, n in sizes.items():
        (tmp_path / name).write_bytes(b"x" * n)
    names = list(sizes) + ["gone.mp4"]
    refs = [VideoRef(tmp_path / n, n) for n in names]
    _, jobs, _, _ = reuse_finished(refs, None, Journal(tmp_path / "out.h5"), "run")
    assert [ref.relpath for _, ref, _ in jobs] == ["gone.mp4", "b.mp4", "d.mp4", "c.mp4", "a.mp4"]


def test_started_workers_decode_before_the_pool_is_iterated(corpus, tiny_ckpt):
    """extract sets the model up between start() and iterating: the workers must already be
    decoding then (their first messages wait in the pipes), not idle until the first item is asked for."""
    spec = load_model(tiny_ckpt).info.preprocess
    refs = find_videos([corpus["root"]], include=("*.mp4",))
    plan = PlanSettings(clip_seconds=spec.clip_seconds, hop_seconds=None, missing_audio="nan",
                        precision="fp32", raw_frames=False)
    pool = WorkerPool([(i, r, None) for i, r in enumerate(refs)], spec, plan, n_workers=2,
                      lend_tensors=True).start()
    try:
        assert all(w.out.poll(30.0) for w in pool.workers)  # a message from each, nothing iterated yet
    finally:
        pool.close()


def test_a_set_up_that_fails_stops_the_decoding_workers(corpus, tiny_ckpt, tmp_path, monkeypatch):
    """The workers start decoding before the model is set up; a set-up that fails (here the
    encoder) raises its own error at once and leaves no worker behind, busy or waiting."""
    class FailingEncoder:
        def __init__(self, *args, **kwargs):
            time.sleep(1.0)  # the workers are well into their first videos by now
            raise RuntimeError("set-up failed")

    monkeypatch.setattr(extract_module, "BatchEncoder", FailingEncoder)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="set-up failed"):
        extract_module.extract([corpus["root"]], tmp_path / "out.h5", weights=tiny_ckpt, workers=2,
                               device="cpu", progress=False)
    assert time.monotonic() - started < 30
    assert not [p for p in multiprocessing.active_children() if p.name == "socialfeat-decoder"]
    assert not (tmp_path / "out.h5").exists()
