"""The pretraining loop, as the steps :func:`pretrain` runs in order: check the settings
and the run folder, build (or restore) the model, build the data, build the optimisation,
restore its state (every check that can fail is done by then), then prepare the run folder
(``--overwrite`` removes the earlier run only now) and run epochs of training steps, each
epoch followed by a validation pass, with atomic checkpoints along the way (after the
validation of a complete epoch, never between the two), at Ctrl-C / SIGTERM and at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretraining.config import PretrainConfig, check_settings, option_flag
from pretraining.data import (
    DamagedCorpusError,
    GlobalBatchSampler,
    SkippedClip,
    TrainClips,
    collate_readable,
    split_validation,
    usable_videos,
)
from pretraining.distributed import (
    all_gather_objects,
    any_process,
    barrier,
    cleanup,
    init_distributed,
    mean_over_processes,
)
from pretraining.init import load_initial_weights
from pretraining.objective import PretrainObjective
from pretraining.run_folder import (
    CHECKPOINT,
    SKIPPED_LOG,
    TRAIN_LOG,
    VAL_LOG,
    VIDEOS_LOG,
    CsvLog,
    check_run_folder,
    clear_previous_run,
    remove_stale_temporaries,
    write_videos_table,
)
from pretraining.schedule import make_scheduler
from socialfeat.architectures import get_arch_config
from socialfeat.errors import UsageError
from socialfeat.models import create_model, read_checkpoint, save_checkpoint
from socialfeat.models.checkpoint import ModelInfo, build_model, load_state_dict_strict
from socialfeat.pipeline import worker_init
from socialfeat.walk import find_videos

log = logging.getLogger(__name__)
LOSS_TERMS = ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "c_acc")
VAL_TERMS = ("val_loss_mae_a", "val_loss_mae_v", "val_loss_c", "val_r1_audio_to_visual",
             "val_r1_visual_to_audio", "val_clips")
SKIPPED_COLUMNS = ["step", "epoch", "path", "start_s", "error"]
# What --resume takes from the command line (when given): how long and how the run goes on,
# not what it trains; every other setting comes from the checkpoint.
RESUME_OVERRIDES = ("epochs", "max_steps", "checkpoint_every", "workers", "device")

__all__ = ["Interrupted", "PretrainConfig", "pretrain", "validate"]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (``signum``) stopped the run between two optimizer steps; ``checkpoint``
    holds everything up to ``step``, so ``--resume`` continues exactly."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        super().__init__(signum, step, checkpoint)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


# ---------------------------------------------------------------- steps before training
def check_run_folder_use(out: Path, resume: bool, overwrite: bool, rank: int) -> bool:
    """Say whether there is a checkpoint to resume; refuses to start over an earlier run
    unasked (every process checks, so all stop together). Changes nothing."""
    check_run_folder(out, resume, overwrite)
    resuming = resume and (out / CHECKPOINT).exists()
    if resume and not resuming and rank == 0:
        log.warning("%s: no checkpoint to resume, starting a new run", out / CHECKPOINT)
    return resuming


def prepare_run_folder(out: Path, overwrite: bool, started: float, rank: int) -> None:
    """Make ``out`` ready once the run is known to start: rank 0 clears the earlier run
    (``overwrite``) and removes stale checkpoint temporaries; the others wait."""
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            clear_previous_run(out)
        remove_stale_temporaries(out, started)
    barrier()


def absolute_inputs(cfg: PretrainConfig) -> PretrainConfig:
    """The config with absolute input paths, so that the run folder's record does not depend
    on the directory the command was started from."""
    return dataclasses.replace(cfg, inputs=[os.path.abspath(p) for p in cfg.inputs])


def new_model(cfg: PretrainConfig) -> nn.Module:
    """A freshly initialised model (seeded), optionally started from ``cfg.init`` weights."""
    torch.manual_seed(cfg.seed)
    overrides: dict[str, Any] = {"norm_pix_loss": cfg.norm_pix_loss}
    if get_arch_config(cfg.arch)["family"] == "social-mae":
        overrides["target_order"] = cfg.target_order
    model = create_model(cfg.arch, **overrides)
    if cfg.clip_seconds:
        spec = dataclasses.replace(model.info.preprocess, clip_seconds=float(cfg.clip_seconds))
        model.info.preprocess = model.preprocess = spec
    if cfg.init != "scratch":
        load_initial_weights(model, cfg.init, cfg.video_patch_init)
    return model


def resumed_config(saved: PretrainConfig, cfg: PretrainConfig, given: Collection[str],
                   rank: int) -> PretrainConfig:
    """The run's own settings, with the RESUME_OVERRIDES that were ``given`` (else the run's,
    e.g. its --epochs) and the inputs given now (a warning when they differ from the run's);
    a warning names every other given setting that differs from the run's, as it is ignored."""
    taken = {name: getattr(cfg, name) for name in RESUME_OVERRIDES if name in given}
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    ignored = [f"{option_flag(fields[n])} {getattr(cfg, n)!r} (the run's: {getattr(saved, n)!r})" for n in fields
               if n in given and n not in (*RESUME_OVERRIDES, "inputs", "out") and getattr(cfg, n) != getattr(saved, n)]
    inputs = cfg.inputs or saved.inputs
    if rank == 0 and ignored:
        log.warning("--resume continues the run with its own settings; ignored: %s", ", ".join(ignored))
    if rank == 0 and inputs != saved.inputs:
        log.warning("INPUTS %s differ from the run's %s: training goes on with the videos found in INPUTS (the "
                    "same clips as before only if these are the same files)", " ".join(inputs), " ".join(saved.inputs))
    return dataclasses.replace(saved, **taken, inputs=inputs, out=cfg.out)


def restore_model(cfg: PretrainConfig, ckpt_path: Path, given: Collection[str],
                  rank: int) -> tuple[PretrainConfig, nn.Module, dict[str, Any]]:
    """(config, model, training state) of the checkpoint: a resumed run continues with
    its own settings (see resumed_config)."""
    obj = read_checkpoint(ckpt_path)
    state = obj["extra"]["train_state"]
    cfg = resumed_config(PretrainConfig.from_dict(state["config"]), cfg, given, rank)
    model = build_model(ModelInfo.from_dict(obj["config"]))
    load_state_dict_strict(model, obj["state_dict"], str(ckpt_path))
    return cfg, model, state


@dataclass
class Data:
    """Training and validation clips, and how training batches are drawn; ``videos`` and
    ``held_out`` (relative paths) are recorded in each checkpoint for a resumed run."""

    train: TrainClips
    val: TrainClips | None
    sampler: GlobalBatchSampler
    steps_per_epoch: int
    videos: list[str]
    held_out: list[str]
    left_out: list[tuple[str, str]]  # (relative path, why) of the videos found that cannot train


def say_changed_videos(found: list[str], recorded: list[str]) -> None:
    """Warn when a resumed run finds other usable videos than it recorded (recordings added to
    the folder between two jobs, say): its clips and epochs are not the run's from here on."""
    new, gone = sorted(set(found) - set(recorded)), sorted(set(recorded) - set(found))
    if new or gone:
        def names(paths: list[str]) -> str:
            return f" ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})" if paths else ""

        log.warning("the videos found differ from the run's: %d new%s, %d gone%s; the clips and the length of an "
                    "epoch differ from the run's from here on (held-out videos stay held out, new ones train); "
                    "to train on other videos, start a new run with --init", len(new), names(new), len(gone),
                    names(gone))


def build_data(cfg: PretrainConfig, model: nn.Module, rank: int, world: int,
               state: dict[str, Any] | None = None) -> Data:
    """Find the videos, hold whole videos out for validation (those a resumed run's ``state``
    held out), and check that an epoch has at least one optimizer step."""
    spec = model.info.preprocess
    refs = find_videos(cfg.inputs, include=tuple(cfg.include), exclude=tuple(cfg.exclude))
    usable, left_out = usable_videos(refs, spec)
    recorded = state.get("videos") if state else None  # None: a checkpoint from before videos were recorded
    if recorded is not None and rank == 0:
        say_changed_videos([v.ref.relpath for v in usable], recorded)
    if state and state.get("world", world) != world and rank == 0:  # --batch-size is per process
        log.warning("this run has %d process(es), the run had %d: the global batch is %d clips instead of %d, so the "
                    "clips of each step and the length of an epoch (and the learning-rate schedule over it) differ "
                    "from the run's from here on; resume with %d processes to continue exactly", world,
                    state["world"], cfg.batch_size * world, cfg.batch_size * state["world"], state["world"])
    train_videos, val_videos = split_validation(usable, cfg.val_fraction, cfg.seed,
                                                state.get("held_out") if state else None)
    if not train_videos:
        raise UsageError("no usable training videos (readable, with audio, long enough)")
    noise = "normal" if model.info.family == "social-mae" else "uniform"

    def clips(videos: list, training: bool) -> TrainClips:
        return TrainClips(videos, spec, noise, model.num_audio_tokens, model.num_video_tokens, cfg.seed,
                          cfg.clips_per_video if training else None, random_windows=training,
                          replace_damaged=training)

    train = clips(train_videos, True)
    sampler = GlobalBatchSampler(len(train), cfg.batch_size, rank, world, cfg.seed)
    steps_per_epoch = sampler.batches_per_epoch() // cfg.accum_steps
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train)} training clips are fewer than one global batch "
                         f"({cfg.batch_size} x {world} processes x {cfg.accum_steps} accumulation steps)")
    return Data(train, clips(val_videos, False) if val_videos else None, sampler, steps_per_epoch,
                [v.ref.relpath for v in usable], [v.ref.relpath for v in val_videos],
                [(ref.relpath, why) for ref, why in left_out])


@dataclass
class Optimisation:
    """The loss (DDP-wrapped when several processes train), the optimizer and the schedule."""

    objective: PretrainObjective
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def build_optimisation(cfg: PretrainConfig, model: nn.Module, world: int, steps_per_epoch: int) -> Optimisation:
    """Adam on the trainable parameters with the reference's step decay (per optimizer step)."""
    objective = PretrainObjective(model, cfg.mask_ratio_a, cfg.mask_ratio_v, cfg.mae_weight, cfg.contrast_weight)
    # every block carries three sets of norms and only some are used on each path: unused parameters exist
    wrapped = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True) \
        if world > 1 else objective
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, betas=cfg.betas)
    scheduler = make_scheduler(optimizer, steps_per_epoch, cfg.warmup_steps, cfg.lr_decay_start,
                               cfg.lr_decay_every, cfg.lr_decay)
    return Optimisation(objective, wrapped, optimizer, scheduler)


def restore_optimisation(opt: Optimisation, state: dict[str, Any] | None) -> int:
    """Load the optimizer and schedule state of a resumed run; returns its step (0 if new)."""
    if state is None:
        return 0
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


@dataclass
class RunLogs:
    """The CSV logs of a run (rank 0 only): per step, per validation, per skipped clip."""

    train: CsvLog
    val: CsvLog | None
    skipped: CsvLog
    warned: set[str] = dataclasses.field(default_factory=set)  # files already reported on stderr

    def write_skipped(self, clips: list[SkippedClip], step: int, epoch: int) -> None:
        """Log every skipped clip; warn on stderr once per file (the CSV has them all)."""
        for c in clips:
            self.skipped.write({"step": step, "epoch": epoch, "path": c.path, "start_s": c.start_s,
                                "error": c.error})
            if c.path not in self.warned:
                self.warned.add(c.path)
                log.warning("skipping damaged clips of %s (first at %.2f s: %s); all are listed in %s",
                            c.path, c.start_s, c.error, self.skipped.path)


def open_logs(out: Path, keep_until_step: int | None, with_validation: bool) -> RunLogs:
    """The run's logs; a resumed run keeps the rows up to its checkpoint's step."""
    return RunLogs(
        train=CsvLog(out / TRAIN_LOG, ["step", "epoch", "lr", *LOSS_TERMS, "clips_per_s"], keep_until_step),
        val=CsvLog(out / VAL_LOG, ["step", "epoch", *VAL_TERMS], keep_until_step) if with_validation else None,
        skipped=CsvLog(out / SKIPPED_LOG, SKIPPED_COLUMNS, keep_until_step))


def total_steps(cfg: PretrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: all epochs, or fewer with ``max_steps``."""
    steps = steps_per_epoch * cfg.epochs
    return steps if cfg.max_steps is None else min(cfg.max_steps, steps)


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(objective: PretrainObjective, dataset: TrainClips, batch_size: int,
             device: torch.device) -> tuple[dict[str, float], list[SkippedClip]]:
    """Held-out reconstruction and contrastive losses with fixed masks, and audio<->visual
    retrieval recall@1 among all held-out clips; plus the held-out clips that could not be read."""
    model = objective.model
    model.eval()
    sums = {k: 0.0 for k in ("loss_mae_a", "loss_mae_v", "loss_c")}
    emb_a, emb_v, n_batches, skipped = [], [], 0, []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_readable)
    for batch, skipped_here in loader:
        skipped += skipped_here
        if batch is None:
            continue
        b = {k: v.to(device) for k, v in batch.items()}
        out = objective(b["audio"], b["video"], b["noise_a"], b["noise_v"], gather=False)
        for k in sums:
            sums[k] += float(out[k])
        enc = model.encode(b["audio"], b["video"])
        emb_a.append(enc.audio.float())
        emb_v.append(enc.visual.float())
        n_batches += 1
    model.train()
    if not n_batches:
        return {**{k: math.nan for k in VAL_TERMS}, "val_clips": 0}, skipped  # every held-out clip damaged
    a = torch.nn.functional.normalize(torch.cat(emb_a), dim=-1)
    v = torch.nn.functional.normalize(torch.cat(emb_v), dim=-1)
    sim = a @ v.t()
    target = torch.arange(len(sim), device=sim.device)
    return {**{f"val_{k}": s / n_batches for k, s in sums.items()},
            "val_r1_audio_to_visual": float((sim.argmax(1) == target).float().mean()),
            "val_r1_visual_to_audio": float((sim.argmax(0) == target).float().mean()),
            "val_clips": len(sim)}, skipped


# ---------------------------------------------------------------- the loop
def under_torchrun() -> bool:
    """Whether torchrun started this process (it sets TORCHELASTIC_RUN_ID in its workers)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopRequest:
    """Ctrl-C and SIGTERM during training are noted, not raised: the trainer acts on them
    between two optimizer steps, where a checkpoint is consistent (weights, optimizer, logs).
    A second signal gets the handlers that were there before (it stops at once, unsaved), except
    a second SIGTERM under torchrun: at a SLURM time limit every process of the job step gets
    SIGTERM and torchrun passes its own on, so each worker gets two for one request (torchrun's
    SIGKILL after its grace period, or Ctrl-C, still stops at once).
    Outside the main thread (the library called from a program's thread) signals stay as they are."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self.note) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def note(self, signum: int, frame: object) -> None:
        if self.signum is not None:  # torchrun's copy of SLURM's SIGTERM (the only handler still ours)
            return
        self.signum = signum
        torchrun = under_torchrun()
        self.restore(keep=(signal.SIGTERM,) if torchrun else ())
        log.warning("%s: stopping after this step to save a checkpoint (%s to stop at once, unsaved)",
                    signal.Signals(signum).name, "Ctrl-C" if torchrun else "again")

    def restore(self, keep: tuple[int, ...] = ()) -> None:
        """The handlers from before, except those of the signals in ``keep`` (restored later)."""
        for sig, handler in list(self.previous.items()):
            if sig in keep:
                continue
            if handler is not None:
                signal.signal(sig, handler)
            del self.previous[sig]

    def requested(self, device: torch.device) -> int | None:
        """The signal that asked to stop (in any process: all stop at the same step), or None."""
        signum = self.signum
        if any_process(signum is not None, device):
            return signum or signal.SIGTERM
        return None


@contextlib.contextmanager
def batches(loader: DataLoader):
    """Iterate ``loader`` and stop its workers however the iteration ends. An exception's
    traceback keeps the iterator (and so its workers) alive until the interpreter exits, and at
    exit multiprocessing would wait for ever on workers that ignore SIGTERM (quiet_worker_init)."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # absent without workers
        if shutdown is not None:
            shutdown()


def quiet_worker_init(worker_id: int) -> None:
    """A decoding worker leaves Ctrl-C and SIGTERM to the main process (which saves and stops
    the run between two steps): a worker that died of them would fail the next batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    worker_init(worker_id)


@dataclass(frozen=True)
class Process:
    """This process's place in the run: rank 0 writes the logs and checkpoints."""

    rank: int
    world: int
    device: torch.device


class Trainer:
    """Runs optimizer steps from ``step`` on; one instance per process."""

    def __init__(self, cfg: PretrainConfig, model: nn.Module, data: Data, opt: Optimisation, step: int,
                 logs: RunLogs | None, ckpt_path: Path, process: Process, progress: bool):
        self.cfg, self.model, self.data, self.opt, self.step = cfg, model, data, opt, step
        self.logs, self.ckpt_path = logs, ckpt_path
        self.rank, self.world, self.device = process.rank, process.world, process.device
        self.total_steps = total_steps(cfg, data.steps_per_epoch)
        self.saved_step = step if step else None  # the step of the checkpoint in the folder
        self.stop = StopRequest()
        self.bar = tqdm(total=self.total_steps, initial=step, unit="step", desc="pretrain",
                        disable=not progress or self.rank != 0, file=sys.stderr)

    def run(self) -> None:
        """Epochs until the run's last step, a validation pass after each complete epoch
        and then its checkpoint (a checkpoint between the two would resume without that
        validation), and a checkpoint at the end. Ctrl-C / SIGTERM: see stop_if_requested."""
        epoch = self.step // self.data.steps_per_epoch
        with self.stop:
            while self.step < self.total_steps and epoch < self.cfg.epochs:
                self.train_epoch(epoch)
                if self.step % self.data.steps_per_epoch == 0:  # the epoch is complete
                    self.validate(epoch)
                    epoch += 1
                if self.step < self.total_steps:  # else the final checkpoint follows
                    if self.step % self.cfg.checkpoint_every == 0:
                        self.save()
                    self.stop_if_requested()
            self.save()
        self.bar.close()

    def stop_if_requested(self) -> None:
        """After Ctrl-C or SIGTERM: save the current step and raise Interrupted."""
        signum = self.stop.requested(self.device)
        if signum is not None:
            self.save()
            self.bar.close()
            raise Interrupted(signum, self.step, self.ckpt_path)

    def loader(self, epoch: int) -> DataLoader:
        """This epoch's training batches, from the current step on (a resumed run
        starts mid-epoch at the same batch the uninterrupted run would see)."""
        cfg, data = self.cfg, self.data
        data.train.set_epoch(epoch)
        data.sampler.set_epoch(epoch, start_batch=(self.step - epoch * data.steps_per_epoch) * cfg.accum_steps)
        return DataLoader(data.train, batch_sampler=data.sampler, num_workers=cfg.workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=quiet_worker_init,
                          collate_fn=collate_readable)

    def train_epoch(self, epoch: int) -> None:
        """Optimizer steps of one epoch (``accum_steps`` micro-batches each), logged per
        step and checkpointed every ``checkpoint_every`` steps; the epoch's last step and
        the run's are left to ``run`` (validation first, then the checkpoint)."""
        try:
            self._train_epoch(epoch)
        except DamagedCorpusError as e:  # raised in a worker: one line again, without the worker's traceback
            raise DamagedCorpusError(str(e)) from None

    def _train_epoch(self, epoch: int) -> None:
        with batches(self.loader(epoch)) as loader:
            self._train_steps(epoch, loader)

    def _train_steps(self, epoch: int, loader) -> None:
        sums, n_micro, n_clips, skipped, t0 = {k: 0.0 for k in LOSS_TERMS}, 0, 0, [], time.perf_counter()
        for batch, skipped_here in loader:
            n_micro += 1
            last_micro = n_micro % self.cfg.accum_steps == 0
            terms = self.forward_backward(batch, sync=last_micro)
            for k in LOSS_TERMS:
                sums[k] += float(mean_over_processes(terms[k].detach().float()))
            n_clips += len(batch["audio"]) * self.world
            skipped += skipped_here
            if not last_micro:
                continue
            lr = self.optimizer_step()
            self.log_step(epoch, lr, sums, n_clips / (time.perf_counter() - t0), skipped)
            sums, n_clips, skipped, t0 = {k: 0.0 for k in LOSS_TERMS}, 0, [], time.perf_counter()
            if self.step >= self.total_steps or self.step % self.data.steps_per_epoch == 0:
                break
            if self.step % self.cfg.checkpoint_every == 0:
                self.save()
            self.stop_if_requested()

    def forward_backward(self, batch: dict[str, torch.Tensor], sync: bool) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch, gradients accumulated; DDP synchronises
        gradients only on the last micro-batch of a step (``sync``)."""
        b = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        cuda = self.device.type == "cuda"
        no_sync = contextlib.nullcontext() if sync or self.world == 1 else self.opt.wrapped.no_sync()
        with no_sync, torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            terms = self.opt.wrapped(b["audio"], b["video"], b["noise_a"], b["noise_v"])
            loss = float(terms["loss"].detach())
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {self.step + 1}: {loss}")
            (terms["loss"] / self.cfg.accum_steps).backward()
        return terms

    def optimizer_step(self) -> float:
        """Apply the accumulated gradients and advance the schedule; returns the lr used."""
        lr = self.opt.optimizer.param_groups[0]["lr"]
        self.opt.optimizer.step()
        self.opt.optimizer.zero_grad(set_to_none=True)
        self.opt.scheduler.step()
        self.step += 1
        return lr

    def log_step(self, epoch: int, lr: float, sums: dict[str, float], rate: float,
                 skipped: list[SkippedClip]) -> None:
        """One row of train_log.csv (losses averaged over the micro-batches), the clips
        every process skipped in this step, and the progress bar."""
        row = {k: sums[k] / self.cfg.accum_steps for k in LOSS_TERMS}
        skipped = all_gather_objects(skipped)
        if self.logs:
            self.logs.train.write({"step": self.step, "epoch": epoch, "lr": lr, **row,
                                   "clips_per_s": round(rate, 3)})
            self.logs.write_skipped(skipped, self.step, epoch)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", clips_s=f"{rate:.1f}")

    def validate(self, epoch: int) -> None:
        """The held-out pass after a complete epoch (rank 0; the others wait)."""
        if self.data.val is not None and self.rank == 0:
            metrics, skipped = validate(self.opt.objective, self.data.val, self.cfg.batch_size, self.device)
            self.logs.val.write({"step": self.step, "epoch": epoch, **metrics})
            self.logs.write_skipped(skipped, self.step, epoch)
        if self.data.val is not None:
            barrier()

    def save(self) -> None:
        """Checkpoint weights and everything needed to resume exactly (rank 0; the others wait);
        once per step."""
        if self.saved_step == self.step:
            return
        self.saved_step = self.step
        if self.rank == 0:
            train_state = {"step": self.step, "optimizer": self.opt.optimizer.state_dict(),
                           "scheduler": self.opt.scheduler.state_dict(), "config": self.cfg.to_dict(),
                           "videos": self.data.videos, "held_out": self.data.held_out, "world": self.world}
            save_checkpoint(self.model, self.ckpt_path, extra={"train_state": train_state})
        barrier()


# ---------------------------------------------------------------- entry point
def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
             given: Collection[str] | None = None) -> Path:
    """Train; returns the path of the last checkpoint (``<out>/last.pt``).

    ``resume``: continue from ``<out>/last.pt`` (start anew if there is none) with the
    run's settings, except the RESUME_OVERRIDES and inputs among ``given`` (the settings
    the caller chose; default: all of ``cfg``); ``overwrite``: replace an earlier run in
    ``<out>``. Without either, a folder that holds an earlier run is refused
    (FileExistsError) before anything is written. Every check that can fail (settings,
    inputs, starting weights) comes before an earlier run is removed. Ctrl-C / SIGTERM
    save the current step and raise :class:`Interrupted`.
    """
    started = time.time()
    check_settings(cfg)
    cfg = absolute_inputs(cfg)
    given = {f.name for f in dataclasses.fields(cfg)} if given is None else set(given)
    rank, world, dev = init_distributed(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    resuming = check_run_folder_use(out, resume, overwrite, rank)
    cfg, model, state = restore_model(cfg, ckpt_path, given, rank) if resuming else (cfg, new_model(cfg), None)
    model.to(dev).train()
    data = build_data(cfg, model, rank, world, state)
    opt = build_optimisation(cfg, model, world, data.steps_per_epoch)
    step = restore_optimisation(opt, state)
    prepare_run_folder(out, overwrite, started, rank)
    logs = open_logs(out, step if resuming else None, data.val is not None) if rank == 0 else None
    if rank == 0:
        write_videos_table(out / VIDEOS_LOG, data.videos, data.held_out, data.left_out)
    Trainer(cfg, model, data, opt, step, logs, ckpt_path, Process(rank, world, dev), progress).run()
    cleanup()
    return ckpt_path
