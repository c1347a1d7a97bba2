"""``socialfeat pretrain`` on generated recordings: learning, exact resume, torchrun, init, targets."""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SOCIALFEAT, run_cli
from media_factory import make_training_corpus
from processes import freeze, kill

import socialfeat
from pretraining.init import load_initial_weights
from socialfeat.models import SocialMAE, create_model, load_model, save_checkpoint

# contrastive weight 1: in a 32-step run the default 0.01 leaves that term too small to move
TINY = ["--arch", "social-mae-tiny", "--batch-size", "4", "--lr", "1e-3", "--clips-per-video", "8",
        "--contrast-weight", "1", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def train_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "videos"
    make_training_corpus(root)
    return root


def read_log(run: Path, name: str = "train_log.csv") -> list[dict[str, str]]:
    with open(run / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight_run(train_videos, tmp_path_factory) -> Path:
    """32 steps without interruption (4 training videos x 8 clips / batch 4 = 8 steps per epoch)."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    run_cli("pretrain", train_videos, "--out", run, *TINY, "--epochs", "4", "--val-fraction", "0.2",
            "--checkpoint-every", "8")
    return run


def test_the_run_folder_lists_the_videos_trained_on_and_held_out(straight_run, train_videos):
    roles = {r["path"]: r["role"] for r in read_log(straight_run, "videos.csv")}
    assert set(roles) == {v.name for v in train_videos.glob("*.mp4")}
    held = [p for p, role in roles.items() if role == "held_out"]
    assert len(held) == 1 and torch.load(straight_run / "last.pt", weights_only=False)["extra"]["train_state"][
        "held_out"] == held


def test_every_loss_term_decreases(straight_run):
    rows = read_log(straight_run)
    assert [int(r["step"]) for r in rows] == list(range(1, 33))
    for term in ("loss", "loss_mae_a", "loss_mae_v", "loss_c"):
        values = np.array([float(r[term]) for r in rows])
        assert np.isfinite(values).all()
        assert values[-6:].mean() < 0.97 * values[:6].mean(), (term, values[:6], values[-6:])
    val = list(csv.DictReader(open(straight_run / "val_log.csv")))
    assert len(val) == 4 and int(val[0]["val_clips"]) == 4  # one held-out video, fixed windows
    assert float(val[-1]["val_loss_mae_a"]) < float(val[0]["val_loss_mae_a"])
    assert all(0 <= float(r["val_r1_audio_to_visual"]) <= 1 for r in val)


def test_killed_run_resumes_exactly(train_videos, straight_run, tmp_path):
    run = tmp_path / "killed"
    args = [str(SOCIALFEAT), "pretrain", str(train_videos), "--out", str(run), *TINY, "--epochs", "4",
            "--val-fraction", "0.2", "--checkpoint-every", "8"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and (not (run / "train_log.csv").exists() or len(read_log(run)) < 13):
        time.sleep(0.05)  # an event (13 logged steps, a checkpoint after step 8), not a duration
    freeze(proc.pid)
    kill(proc.pid)
    proc.wait()
    assert 13 <= len(read_log(run)) < 32, "the run was not interrupted mid-way"
    run_cli("pretrain", train_videos, "--out", run, "--resume", "--epochs", "4", "--no-progress")
    terms = ("step", "epoch", "lr", "loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "c_acc")
    assert [[r[t] for t in terms] for r in read_log(run)] == [[r[t] for t in terms] for r in read_log(straight_run)]
    a, b = load_model(run / "last.pt"), load_model(straight_run / "last.pt")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


def test_two_processes_match_one(train_videos, tmp_path):
    common = ["--arch", "social-mae-tiny", "--lr", "1e-3", "--clips-per-video", "8", "--contrast-weight", "1",
              "--workers", "0",
              "--no-progress", "--max-steps", "4", "--val-fraction", "0"]
    one = tmp_path / "one"
    run_cli("pretrain", train_videos, "--out", one, "--batch-size", "4", *common)
    two = tmp_path / "two"
    torchrun = shutil.which("torchrun", path=str(SOCIALFEAT.parent))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "--no-python", str(SOCIALFEAT),
                           "pretrain", str(train_videos), "--out", str(two), "--batch-size", "2", *common],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r1, r2 in zip(read_log(one), read_log(two), strict=True):
        for term in ("loss", "loss_mae_a", "loss_mae_v", "loss_c", "c_acc"):
            assert float(r1[term]) == pytest.approx(float(r2[term]), abs=2e-4), (r1["step"], term)
    # Same function learnt. (Weights are not compared one by one: Adam turns the float noise of
    # gradients that are zero in exact arithmetic, e.g. attention key biases, into lr-sized steps.)
    a, b = load_model(one / "last.pt"), load_model(two / "last.pt")
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(3, 208, 128, generator=g), torch.randn(3, 3, 112, 112, 8, generator=g)
    with torch.no_grad():
        ea, eb = a.encode(audio, video), b.encode(audio, video)
    for kind in ("joint", "audio", "visual"):
        torch.testing.assert_close(getattr(ea, kind), getattr(eb, kind), atol=2e-3, rtol=0, msg=kind)


def test_checkpoint_feeds_extract(straight_run, train_videos, tmp_path):
    out = tmp_path / "feats.h5"
    proc = run_cli("extract", train_videos, "-o", out, "--weights", straight_run / "last.pt", "--no-progress")
    assert proc.returncode == 0
    df = socialfeat.load_features(out)
    assert len(df) == 5 * 4 and np.isfinite(df.filter(like="joint_").to_numpy()).all()


def test_cav_mae_init_is_inflated_into_social_mae(tmp_path):
    torch.manual_seed(0)
    cav = create_model("cav-mae-tiny")
    path = save_checkpoint(cav, tmp_path / "cav.pt")
    social = create_model("social-mae-tiny", target_order="tokens")
    report = load_initial_weights(social, str(path), "inflate")
    assert {"patch_embed_v.proj.weight", "pos_embed_v", "decoder_pred_v.weight"} <= set(report["inflated"])
    frame = torch.randn(1, 3, 112, 112)
    still = frame.unsqueeze(-1).repeat(1, 1, 1, 1, 8)  # a video whose 8 frames are the same image
    with torch.no_grad():
        tokens_3d = social.patch_embed_v(still).reshape(1, 49, 4, -1)
        tokens_2d = cav.patch_embed_v(frame)
    for t in range(4):
        torch.testing.assert_close(tokens_3d[:, :, t], tokens_2d, atol=1e-5, rtol=0)
    fresh = create_model("social-mae-tiny")
    report = load_initial_weights(fresh, str(path), "reference")
    assert "patch_embed_v.proj.weight" in report["fresh"] and not report["inflated"]
    assert "blocks_a.0.attn.qkv.weight" in report["loaded"]


def test_token_order_target_matches_encoder_tubelets():
    model = SocialMAE(img_size=32, audio_length=32, embed_dim=16, modality_specific_depth=11, num_heads=2,
                      decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, n_frame=4, stride=2,
                      target_order="tokens")
    video = torch.randn(1, 3, 32, 32, 4)
    target = model.patchify_video(video)  # (1, 2*2*2, 16*16*2*3)
    for j in range(target.shape[1]):
        h, w, t = np.unravel_index(j, (2, 2, 2))  # the encoder's (h, w, t) order
        cube = video[0, :, h * 16:(h + 1) * 16, w * 16:(w + 1) * 16, t * 2:(t + 1) * 2]  # (c, p, q, s)
        assert torch.equal(target[0, j], cube.permute(1, 2, 3, 0).reshape(-1))
    ref = SocialMAE(img_size=32, audio_length=32, embed_dim=16, modality_specific_depth=11, num_heads=2,
                    decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, n_frame=4, stride=2)
    assert not torch.equal(ref.patchify_video(video), target)  # the reference's order differs


def test_gradient_accumulation_and_warmup(train_videos, tmp_path):
    run = tmp_path / "accum"
    run_cli("pretrain", train_videos, "--out", run, "--arch", "social-mae-tiny", "--batch-size", "2",
            "--accum-steps", "2", "--warmup-steps", "4", "--lr", "1e-3", "--max-steps", "3", "--clips-per-video", "4",
            "--val-fraction", "0", "--workers", "0", "--no-progress")
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["lr"]) for r in rows] == pytest.approx([2.5e-4, 5e-4, 7.5e-4])  # linear warm-up


def test_rerun_without_resume_or_overwrite_is_refused(train_videos, straight_run):
    before = {name: (straight_run / name).read_bytes() for name in ("train_log.csv", "val_log.csv", "last.pt")}
    proc = run_cli("pretrain", train_videos, "--out", straight_run, *TINY, "--max-steps", "1", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(straight_run) in proc.stderr, proc.stderr
    assert "use --resume to continue it or --overwrite to start again" in proc.stderr
    assert {name: (straight_run / name).read_bytes() for name in before} == before


def test_resume_in_a_new_folder_starts_and_removes_stale_temporaries(train_videos, tmp_path):
    run = tmp_path / "requeued"
    run.mkdir()
    now = time.time()
    stale = run / ".last.pt.k1ll3d_x.tmp"  # what atomic_path leaves when killed mid-write
    live = run / ".last.pt.wr1t1ng_.tmp"  # touched after this run started: a live writer's
    others = [run / ".notes.txt.k1ll3d_x.tmp", run / "last.pt.tmp", run / "notes.txt"]  # not our temporaries
    for path, mtime in [(stale, now - 3600), (live, now + 3600)] + [(p, now - 3600) for p in others]:
        path.write_bytes(b"x" * 100)
        os.utime(path, (mtime, mtime))
    proc = run_cli("pretrain", train_videos, "--out", run, "--resume", *TINY, "--max-steps", "1",
                   "--val-fraction", "0")
    assert "no checkpoint to resume, starting a new run" in proc.stderr
    assert [int(r["step"]) for r in read_log(run)] == [1] and (run / "last.pt").is_file()
    assert not stale.exists() and live.exists() and all(p.exists() for p in others)


def test_overwrite_replaces_the_previous_run(train_videos, straight_run, tmp_path):
    run = shutil.copytree(straight_run, tmp_path / "again")
    run_cli("pretrain", train_videos, "--out", run, "--overwrite", *TINY, "--max-steps", "1", "--val-fraction", "0")
    assert [int(r["step"]) for r in read_log(run)] == [1]
    assert not (run / "val_log.csv").exists()  # the old run's validation log does not pass for the new one's
    assert torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]["step"] == 1


def test_damaged_file_is_skipped_and_training_finishes(train_videos, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for video in sorted(train_videos.glob("*.mp4")):
        (corpus / video.name).symlink_to(video)
    data = (train_videos / "speaker_0.mp4").read_bytes()
    damaged = corpus / "truncated.mp4"  # as media_factory's truncated.mp4: the container promises 8 s
    damaged.write_bytes(data[: len(data) // 3])
    (corpus / "empty.mp4").write_bytes(b"")
    (corpus / "notes.mp4").write_text("not a video\n")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(train_videos / "speaker_0.mp4"), "-an", "-c:v", "copy",
                    str(corpus / "silent.mp4")], check=True)
    run = tmp_path / "run"
    # 6 videos x 2 clips / batch 4: one epoch of 3 steps reads both clips of the damaged file
    proc = run_cli("pretrain", corpus, "--out", run, *TINY, "--clips-per-video", "2", "--epochs", "1",
                   "--val-fraction", "0")
    assert proc.returncode == 0
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3]
    skipped = read_log(run, "skipped.csv")
    assert skipped and {r["path"] for r in skipped} == {str(damaged)}, skipped
    assert proc.stderr.count(f"skipping damaged clips of {damaged}") == 1, proc.stderr
    # the files left out at the start are in the run folder too, each with its reason
    roles = {r["path"]: (r["role"], r["reason"]) for r in read_log(run, "videos.csv")}
    assert {p: role for p, (role, _) in roles.items()} == {
        **{v.name: "train" for v in train_videos.glob("*.mp4")}, "truncated.mp4": "train",
        "empty.mp4": "left_out", "notes.mp4": "left_out", "silent.mp4": "left_out"}
    assert "no audio track" in roles["silent.mp4"][1]
    assert roles["empty.mp4"][1] and roles["notes.mp4"][1]
    for name in ("empty.mp4", "notes.mp4", "silent.mp4"):
        assert proc.stderr.count(name) == 1, proc.stderr


def wait_for(condition, what: str, timeout: float = 300) -> None:
    """Poll an event of a running command (not a duration)."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.005)


@pytest.mark.parametrize("option", [["--clip-seconds", "nan"], ["--clip-seconds", "1e-7"], ["--lr", "nan"],
                                    ["--lr", "-1"], ["--betas", "0.9", "inf"], ["--contrast-weight", "nan"]])
def test_nonsense_numbers_are_usage_errors(train_videos, tmp_path, option):
    proc = run_cli("pretrain", train_videos, "--out", tmp_path / "run", *TINY, "--max-steps", "1", *option,
                   check=False, timeout=60)  # --clip-seconds nan planned windows for ever, 1e-7 ran out of memory
    assert proc.returncode == 2 and f"Invalid value for '{option[0]}'" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_library_refuses_what_the_command_line_refuses(tmp_path):
    from pretraining import PretrainConfig, pretrain
    from socialfeat.errors import UsageError

    for bad in ({"clip_seconds": float("nan")}, {"clip_seconds": 1e-7}, {"lr": -1.0}, {"betas": (0.9, 1.5)}):
        with pytest.raises(UsageError):
            pretrain(PretrainConfig(inputs=[str(tmp_path)], out=str(tmp_path / "run"), **bad))
    assert not (tmp_path / "run").exists()


def probe_head(path: Path) -> Path:
    """A probe head's weights: a .pt file of tensors that are no backbone."""
    torch.save({"head.weight": torch.randn(3, 64), "head.bias": torch.zeros(3), "norm.weight": torch.ones(64),
                "norm.bias": torch.zeros(64)}, path)
    return path


@pytest.mark.parametrize("problem", ["init-missing", "init-not-a-backbone", "no-videos"])
def test_overwrite_removes_nothing_when_the_new_run_cannot_start(train_videos, straight_run, tmp_path, problem):
    run = shutil.copytree(straight_run, tmp_path / "kept")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    inputs, init = train_videos, "scratch"
    if problem == "init-missing":
        init = tmp_path / "no-such.pt"
    elif problem == "init-not-a-backbone":
        init = probe_head(tmp_path / "head.pt")
    else:
        inputs = empty
    proc = run_cli("pretrain", inputs, "--out", run, "--overwrite", *TINY, "--init", init, "--max-steps", "1",
                   check=False)
    assert proc.returncode == 2 and proc.stderr.count("socialfeat: error:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_init_that_is_no_backbone_is_refused_and_fresh_parts_are_warned(tmp_path, caplog):
    from socialfeat.errors import UsageError

    with pytest.raises(UsageError, match="is not a backbone of social-mae-tiny"):
        load_initial_weights(create_model("social-mae-tiny"), str(probe_head(tmp_path / "head.pt")))
    cav = save_checkpoint(create_model("cav-mae-tiny"), tmp_path / "cav.pt")
    with caplog.at_level("WARNING", logger="pretraining.init"):
        load_initial_weights(create_model("social-mae-tiny"), str(cav), "reference")  # 2-D visual parts dropped
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "tensors taken, the others fresh" in warned[0], warned


def test_every_file_damaged_ends_with_one_line(train_videos, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for video in sorted(train_videos.glob("*.mp4")):  # the header and the first frames: probed fine, then damaged
        (corpus / video.name).write_bytes(video.read_bytes()[:10000])
    proc = run_cli("pretrain", corpus, "--out", tmp_path / "run", *TINY, "--workers", "1", "--val-fraction", "0",
                   check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "are all damaged" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr


def start_pretrain(train_videos: Path, run: Path, *extra: str) -> subprocess.Popen:
    """The straight run's command, started in the background."""
    return subprocess.Popen([str(SOCIALFEAT), "pretrain", str(train_videos), "--out", str(run), *TINY, "--epochs", "4",
                             "--val-fraction", "0.2", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def test_killed_between_checkpoint_and_validation_resumes_with_every_validation(train_videos, straight_run,
                                                                                tmp_path):
    run = tmp_path / "killed"
    proc = start_pretrain(train_videos, run, "--checkpoint-every", "8")  # 8 steps per epoch
    wait_for(lambda: (run / "last.pt").exists(), "no checkpoint")
    freeze(proc.pid)  # at once: the checkpoint of an epoch's last step used to come before its validation
    kill(proc.pid)
    proc.wait()
    run_cli("pretrain", train_videos, "--out", run, "--resume", "--no-progress")
    assert read_log(run, "val_log.csv") == read_log(straight_run, "val_log.csv")
    terms = ("step", "epoch", "lr", "loss", "loss_c")
    assert [[r[t] for t in terms] for r in read_log(run)] == [[r[t] for t in terms] for r in read_log(straight_run)]


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_the_step_and_says_how_to_resume(train_videos, straight_run, tmp_path, signum, code):
    run = tmp_path / "stopped"
    proc = start_pretrain(train_videos, run, "--checkpoint-every", "100")
    wait_for(lambda: (run / "train_log.csv").exists() and len(read_log(run)) >= 10, "the run did not start")
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr
    steps = len(read_log(run))
    assert 10 <= steps < 32
    assert torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]["step"] == steps
    last = stderr.strip().splitlines()[-1]
    assert f"step {steps} is saved in {run / 'last.pt'}" in last, stderr
    command = shlex.split(last.split("continue with: ")[1])
    assert command[0] == "socialfeat" and "--resume" in command
    run_cli(*command[1:], "--no-progress")
    assert read_log(run, "val_log.csv") == read_log(straight_run, "val_log.csv")
    terms = ("step", "epoch", "lr", "loss", "loss_c")
    assert [[r[t] for t in terms] for r in read_log(run)] == [[r[t] for t in terms] for r in read_log(straight_run)]


def test_resume_from_elsewhere_takes_inputs_keeps_run_length_and_names_ignored_options(train_videos, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "v").symlink_to(train_videos)
    run_cli("pretrain", "v", "--out", "run", *TINY, "--max-steps", "2", "--val-fraction", "0", cwd=here)
    run = here / "run"
    saved = torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]["config"]
    assert saved["inputs"] == [str(here / "v")]  # absolute: the record does not depend on the directory
    proc = run_cli("pretrain", here / "v", "--out", run, "--resume", "--lr", "0.01", "--batch-size", "2",
                   "--no-progress", cwd=elsewhere)
    assert [int(r["step"]) for r in read_log(run)] == [1, 2]  # --max-steps 2 is the run's, not the default
    assert "ignored: --batch-size 2 (the run's: 4), --lr 0.01 (the run's: 0.001)" in proc.stderr, proc.stderr
    moved = tmp_path / "moved"
    moved.symlink_to(train_videos)
    proc = run_cli("pretrain", moved, "--out", run, "--resume", "--max-steps", "3", "--no-progress", cwd=elsewhere)
    assert f"INPUTS {moved} differ from the run's {here / 'v'}" in proc.stderr
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3]
    state = torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]
    assert state["step"] == 3 and state["config"]["lr"] == 1e-3 and state["config"]["inputs"] == [str(moved)]


def test_sigterm_repeated_by_torchrun_still_saves_the_step(train_videos, tmp_path):
    """At a SLURM time limit every process of the job step gets SIGTERM and torchrun passes its own on to
    its workers, so a worker under torchrun gets SIGTERM twice: the copy stopped it unsaved ('nothing was
    saved yet'), losing up to --checkpoint-every steps at every requeue. torchrun is stood in for by the
    variable it sets in its workers' environment (a single process, as a real torchrun run gave the same)."""
    run = tmp_path / "slurm"
    # 8-clip batches: a step lasts long enough for the second signal to arrive within it
    proc = subprocess.Popen([str(SOCIALFEAT), "pretrain", str(train_videos), "--out", str(run), *TINY,
                             "--batch-size", "8", "--max-steps", "4", "--val-fraction", "0",
                             "--checkpoint-every", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TORCHELASTIC_RUN_ID": "slurm-job"})
    wait_for(lambda: (run / "train_log.csv").exists() and len(read_log(run)) >= 1, "the run did not start")
    proc.send_signal(signal.SIGTERM)  # SLURM's
    for line in proc.stderr:
        if "SIGTERM: stopping after this step" in line:
            break
    proc.send_signal(signal.SIGTERM)  # torchrun's copy
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, stderr
    steps = len(read_log(run))
    assert steps < 4, "the run ended before the signals"
    assert (run / "last.pt").is_file(), stderr
    assert torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]["step"] == steps
    assert f"step {steps} is saved in" in stderr.strip().splitlines()[-1], stderr


def test_resume_after_videos_were_added_keeps_the_held_out_videos_and_says_so(train_videos, tmp_path):
    """Recordings keep arriving in a corpus folder while a requeued job resumes: the split drawn again
    over 6 videos instead of 5 moved the held-out video into training (validation then measured a video
    the model had trained on), silently."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for video in sorted(train_videos.glob("*.mp4")):
        (corpus / video.name).symlink_to(video)
    run = tmp_path / "run"
    common = [*TINY, "--clips-per-video", "2", "--val-fraction", "0.2"]
    run_cli("pretrain", corpus, "--out", run, *common, "--max-steps", "1")
    state = torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]
    held_out = state["held_out"]
    assert len(held_out) == 1 and len(state["videos"]) == 5
    (corpus / "speaker_5.mp4").symlink_to(train_videos / "speaker_1.mp4")  # a new recording
    proc = run_cli("pretrain", corpus, "--out", run, "--resume", "--max-steps", "2", "--no-progress")
    assert "the videos found differ from the run's: 1 new (speaker_5.mp4), 0 gone" in proc.stderr, proc.stderr
    state = torch.load(run / "last.pt", weights_only=False)["extra"]["train_state"]
    assert state["step"] == 2 and state["held_out"] == held_out and len(state["videos"]) == 6  # recorded anew


def test_a_failed_log_rewrite_on_resume_keeps_the_log(tmp_path, monkeypatch):
    """A resumed run rewrites its logs up to its checkpoint's step: the file was truncated first, so a
    rewrite that failed (a full disk or quota, a job killed at that moment) lost the whole log."""
    from pretraining.run_folder import CsvLog

    path = tmp_path / "train_log.csv"
    log = CsvLog(path, ["step", "loss"], None)
    for step in range(1, 6):
        log.write({"step": step, "loss": step / 10})
    before = path.read_text()

    def disk_full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError):
        CsvLog(path, ["step", "loss"], 3)
    assert path.read_text() == before
    monkeypatch.undo()
    CsvLog(path, ["step", "loss"], 3)
    assert [int(r["step"]) for r in csv.DictReader(open(path))] == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.csv"]  # no temporary left


def test_resume_with_another_number_of_processes_says_so(train_videos, tmp_path):
    """--batch-size is per process: a job resubmitted with fewer GPUs resumed with another global batch
    (other clips per step, another epoch length and schedule) without a word."""
    run = tmp_path / "run"
    run_cli("pretrain", train_videos, "--out", run, *TINY, "--clips-per-video", "2", "--max-steps", "1",
            "--val-fraction", "0")
    obj = torch.load(run / "last.pt", weights_only=False)
    assert obj["extra"]["train_state"]["world"] == 1
    obj["extra"]["train_state"]["world"] = 2  # as a 2-process torchrun run would have saved it
    torch.save(obj, run / "last.pt")
    proc = run_cli("pretrain", train_videos, "--out", run, "--resume", "--max-steps", "2", "--no-progress")
    assert "this run has 1 process(es), the run had 2: the global batch is 4 clips instead of 8" in proc.stderr, \
        proc.stderr
