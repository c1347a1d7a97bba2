"""Beyond one machine: shards + merge, and the Ray engine (local cluster, CPU only), compared with
the single-process engine on the same inputs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
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


def test_merge_holds_a_shards_rows_not_its_embeddings(single):
    """merge reads a shard's videos and errors, and each video's clips and arrays only when the merged
    file is written (one video at a time): what it loads is what the file holds at that video's rows."""
    from socialfeat.merge import read_results

    videos, _, _ = read_results(single)
    assert videos and not any(hasattr(v, "embeddings") for v in videos)
    feats = socialfeat.load_features(single, embeddings="all")
    columns = [c for c in feats.columns if c.startswith(("joint_", "audio_", "visual_"))]
    got = [v.load() for v in videos]
    assert sum(len(r.clips) for r in got) == len(feats)
    for r in got:
        mine = feats[feats["video_id"] == r.video["video_id"]]
        assert [c["clip_index"] for c in r.clips] == mine["clip_index"].tolist()
        if r.clips:
            stacked = [r.embeddings[k] for k in ("joint", "audio", "visual")]
            np.testing.assert_array_equal(np.concatenate(stacked, axis=1), mine[columns].to_numpy())  # (NaN: no audio)


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


# ---------------------------------------------------------------- merge's checks, one writer per output
@pytest.fixture(scope="module")
def sites(corpus, tmp_path_factory):
    """Six short recordings in x/ and y/; shard 1/2 of the whole folder takes x/b and y/d."""
    root = tmp_path_factory.mktemp("sites") / "videos"
    for name in ("x/a", "x/b", "x/c", "y/d", "y/e", "y/f"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus["short"], root / f"{name}.mp4")
    return root


def _shard(folder, out, ckpt, index: str, *extra):
    return run_cli("extract", folder, "-o", out, "--weights", ckpt, "--shard", index, "--workers", "1",
                   "--no-progress", *extra)


@pytest.fixture(scope="module")
def halves(sites, tiny_ckpt, tmp_path_factory):
    """Shards 1/2 and 2/2 of ``sites``."""
    folder = tmp_path_factory.mktemp("halves")
    for i in (1, 2):
        _shard(sites, folder / f"p{i}.h5", tiny_ckpt, f"{i}/2")
    return folder / "p1.h5", folder / "p2.h5"


def _one_error_line(proc, code: int) -> str:
    assert proc.returncode == code and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def test_merge_names_the_setting_that_differs(halves, sites, tiny_ckpt, tmp_path):
    p1, _ = halves
    joint = tmp_path / "p2emb.h5"
    _shard(sites, joint, tiny_ckpt, "2/2", "--embeddings", "joint")
    err = _one_error_line(run_cli("merge", p1, joint, "-o", tmp_path / "m.h5", check=False), 1)
    assert f'shards differ in settings: embeddings: ["joint", "audio", "visual"] in {p1}, ["joint"] in {joint}' in err
    assert not (tmp_path / "m.h5").exists()


def test_merge_refuses_shards_made_from_other_inputs(halves, sites, tiny_ckpt, tmp_path):
    """Shard 2/2 run on x/ alone would bring x/b.mp4 back as b.mp4 (the same file twice) and lose a, c, e, f."""
    p1, p2 = halves
    other = tmp_path / "p2x.h5"
    _shard(sites / "x", other, tiny_ckpt, "2/2")
    err = _one_error_line(run_cli("merge", p1, other, "-o", tmp_path / "m.h5", check=False), 1)
    assert (f"made from different inputs: {p1} found 6 videos in {sites.resolve()}, "
            f"{other} found 3 videos in {(sites / 'x').resolve()}") in err
    assert not (tmp_path / "m.h5").exists()
    merged = tmp_path / "ok.h5"
    assert run_cli("merge", p1, p2, "-o", merged).returncode == 0  # the same inputs merge
    videos = socialfeat.load_videos(merged)
    assert sorted(videos.path) == ["x/a.mp4", "x/b.mp4", "x/c.mp4", "y/d.mp4", "y/e.mp4", "y/f.mp4"]


def test_merge_never_replaces_one_of_its_shards(halves):
    p1, p2 = halves
    before = p1.read_bytes()
    err = _one_error_line(run_cli("merge", p1, p2, "-o", p1, check=False), 2)
    assert f"{p1} is one of the files to merge" in err and p1.read_bytes() == before


def test_info_says_which_shard_a_file_is(halves, tmp_path):
    p1, p2 = halves
    assert "shard:       1/2" in run_cli("info", p1).stdout
    merged = tmp_path / "m.h5"
    run_cli("merge", p1, p2, "-o", merged)
    assert "shard:" not in run_cli("info", merged).stdout


@pytest.mark.parametrize("blocked", ["parent is a file", "journal is a file"])
def test_an_output_folder_that_takes_no_files_fails_before_any_work(blocked, corpus, tiny_ckpt, tmp_path):
    """(A read-only folder takes the same path; the suite may run as root, which writes into those.)"""
    out, folder = tmp_path / "feats.h5", tmp_path / "feats.h5.parts"
    if blocked == "parent is a file":
        folder = tmp_path / "notes"
        folder.write_text("x")
        out = folder / "feats.h5"
    else:
        folder.write_text("x")
    t0 = time.time()
    err = _one_error_line(run_cli("extract", corpus["short"], "-o", out, "--weights", tiny_ckpt, "--no-progress",
                                  check=False), 2)
    assert f"cannot write into {folder}/" in err and not out.exists()
    assert time.time() - t0 < 20  # no model loaded, nothing decoded


def test_merge_checks_its_output_folder_before_reading_the_shards(tmp_path):
    (tmp_path / "notes").write_text("x")
    garbage = tmp_path / "p1.h5"
    garbage.write_text("not even HDF5: merge must not have read it")
    err = _one_error_line(run_cli("merge", garbage, "-o", tmp_path / "notes" / "m.h5", check=False), 2)
    assert f"cannot write into {tmp_path / 'notes'}/" in err


def test_two_runs_given_the_same_output_one_refuses_the_other_completes(single, corpus, tiny_ckpt, tmp_path):
    """The SLURM array task whose -o lacks ${SLURM_ARRAY_TASK_ID}: both start at once, one writes."""
    out = tmp_path / "feats.h5"
    args = [str(SOCIALFEAT), "extract", str(corpus["root"]), "-o", str(out), "--weights", str(tiny_ckpt),
            "--no-progress"]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [2, 3], errs  # (the corpus has bad files: 3)
    loser = errs[[p.returncode for p in procs].index(2)]
    winner = procs[[p.returncode for p in procs].index(3)]
    assert loser.count("\n") == 1 and f"{out}: another run is writing it (pid {winner.pid} on " in loser
    assert_same_output(single, out)


HOLD = """import sys, time
from socialfeat.outputs import claim_output
with claim_output(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_merge_waits_for_no_one_and_a_killed_writer_leaves_no_lock(halves, tmp_path):
    p1, p2 = halves
    out = tmp_path / "m.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        err = _one_error_line(run_cli("merge", p1, p2, "-o", out, check=False), 2)
        assert f"{out}: another run is writing it (pid {holder.pid} on " in err and not out.exists()
    finally:
        kill(holder.pid)  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    assert (tmp_path / ".m.h5.lock").exists()  # the file stays; its lock went with the process
    assert run_cli("merge", p1, p2, "-o", out).returncode == 0
    with h5py.File(out) as f:
        assert f.attrs["n_videos"] == 6
