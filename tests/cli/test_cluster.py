"""Beyond one machine: shards + merge, and the Ray engine (local cluster, CPU only), compared with
the single-process engine on the same inputs."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import SOCIALFEAT, run_cli
from processes import command_line, descendants, kill

import socialfeat
from cli.test_extract import assert_same_output

IGNORED = {"merged_from", "shard"}


@pytest.fixture(scope="module")
def single(corpus, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "single.h5"
    run_cli("extract", corpus["root"], "-o", out, "--weights", tiny_ckpt, "--no-progress")
    return out


def test_shards_merge_to_the_single_run(single, corpus, tiny_ckpt, tmp_path):
    parts = []
    for i in (1, 2, 3):
        part = tmp_path / f"part-{i}.h5"
        run_cli("extract", corpus["root"], "-o", part, "--weights", tiny_ckpt, "--shard", f"{i}/3", "--no-progress")
        parts.append(part)
    sizes = [len(socialfeat.load_videos(p)) for p in parts]
    assert sum(sizes) == 13 and all(sizes)  # every video in exactly one shard
    merged = tmp_path / "merged.h5"
    proc = run_cli("merge", *parts, "-o", merged)
    assert proc.returncode == 0
    assert_same_output(single, merged, ignore_attrs=IGNORED)


def test_merge_refuses_mismatched_shards(corpus, tiny_ckpt, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    run_cli("extract", corpus["root"], "-o", a, "--weights", tiny_ckpt, "--shard", "1/2", "--no-progress")
    run_cli("extract", corpus["root"], "-o", b, "--weights", tiny_ckpt, "--shard", "2/2", "--clip-seconds", "3",
            "--no-progress")
    proc = run_cli("merge", a, b, "-o", tmp_path / "m.h5", check=False)
    assert proc.returncode == 1 and "shards differ in settings" in proc.stderr
    assert not (tmp_path / "m.h5").exists()
    proc = run_cli("extract", corpus["talk"], "-o", tmp_path / "x.h5", "--shard", "3/2", "--weights", tiny_ckpt,
                   check=False)
    assert proc.returncode == 2 and "--shard" in proc.stderr


def test_ray_engine_equals_local_even_when_a_worker_is_killed(single, corpus, tiny_ckpt, tmp_path):
    out = tmp_path / "ray.h5"
    args = [str(SOCIALFEAT), "extract", str(corpus["root"]), "-o", str(out), "--weights", str(tiny_ckpt),
            "--engine", "ray", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.time() + 240
    while killed is None and proc.poll() is None and time.time() < deadline:
        # only among this run's own processes (the driver started its Ray cluster as children)
        busy = [pid for pid in descendants(proc.pid) if command_line(pid).startswith("ray::prepare_and_encode")]
        if busy:
            killed = busy[0]
            kill(killed)  # a decoding worker dies mid-video
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=300)
    assert killed is not None, "no Ray worker was caught running"
    assert proc.returncode == 3, stderr  # the corpus has bad files; nothing else failed
    assert_same_output(single, out, atol=1e-5)  # the killed worker's video was retried, nothing lost


def test_ray_engine_writes_the_models_own_predictions(corpus, tiny_ft_ckpt, tmp_path):
    local, ray_out = tmp_path / "local.h5", tmp_path / "ray.h5"
    run_cli("extract", corpus["talk"], "-o", local, "--weights", tiny_ft_ckpt, "--no-progress")
    run_cli("extract", corpus["talk"], "-o", ray_out, "--weights", tiny_ft_ckpt, "--engine", "ray", "--no-progress")
    assert_same_output(local, ray_out, atol=1e-5)
    assert socialfeat.load_features(ray_out, embeddings=None).filter(like="emotion_").sum(axis=1).round(4).eq(1).all()
