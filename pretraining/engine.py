"""The pretraining loop: config -> data, model, optimizer -> epochs of steps, with
atomic checkpoints, exact resume, CSV logs and a validation pass per epoch."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretraining.data import (
    GlobalBatchSampler,
    TrainClips,
    split_validation,
    usable_videos,
)
from pretraining.distributed import (
    barrier,
    cleanup,
    init_distributed,
    mean_over_processes,
)
from pretraining.init import load_initial_weights
from pretraining.objective import PretrainObjective
from pretraining.schedule import make_scheduler
from socialfeat.errors import UsageError
from socialfeat.models import create_model, read_checkpoint, save_checkpoint
from socialfeat.models.checkpoint import ModelInfo, build_model, load_state_dict_strict
from socialfeat.pipeline import worker_init
from socialfeat.walk import find_videos

log = logging.getLogger(__name__)
LOSS_TERMS = ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "c_acc")


@dataclass
class PretrainConfig:
    """Everything a run depends on (saved in every checkpoint). Defaults follow the
    reference scripts: Adam(0.95, 0.999), weight decay 5e-7, lr halved every 5 epochs
    from epoch 10, masking 0.75, contrastive weight 0.01."""

    inputs: list[str]
    out: str
    arch: str = "social-mae"
    init: str = "scratch"  # 'scratch', a registry name, or a checkpoint path
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (total, across resumes)
    batch_size: int = 8  # per process
    accum_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 0
    lr_decay: float = 0.5
    lr_decay_start: int = 10
    lr_decay_every: int = 5
    mask_ratio_a: float = 0.75
    mask_ratio_v: float = 0.75
    mae_weight: float = 1.0
    contrast_weight: float = 0.01
    norm_pix_loss: bool = False
    clip_seconds: float | None = None
    clips_per_video: int | None = None
    target_order: str = "tokens"  # Social-MAE MAE target in the encoder's token order ('reference' to copy)
    video_patch_init: str = "inflate"  # CAV-MAE -> Social-MAE init: 'inflate' or 'reference' (drop)
    val_fraction: float = 0.1
    checkpoint_every: int = 100
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


def _build_model(cfg: PretrainConfig):
    overrides: dict[str, Any] = {"norm_pix_loss": cfg.norm_pix_loss}
    from socialfeat.models.registry import get_arch_config
    arch = get_arch_config(cfg.arch)
    if arch["family"] == "social-mae":
        overrides["target_order"] = cfg.target_order
    model = create_model(cfg.arch, **overrides)
    if cfg.clip_seconds:
        spec = dataclasses.replace(model.info.preprocess, clip_seconds=float(cfg.clip_seconds))
        model.info.preprocess = model.preprocess = spec
    return model


class CsvLog:
    """Append-only CSV that, on resume, first drops rows past the resumed step."""

    def __init__(self, path: Path, columns: list[str], keep_until_step: int | None):
        self.path, self.columns = path, columns
        rows = []
        if keep_until_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)


@torch.no_grad()
def validate(objective: PretrainObjective, dataset: TrainClips, batch_size: int, device: torch.device) -> dict:
    """Held-out reconstruction and contrastive losses with fixed masks, and audio<->visual
    retrieval recall@1 among all held-out clips."""
    model = objective.model
    model.eval()
    sums = {k: 0.0 for k in ("loss_mae_a", "loss_mae_v", "loss_c")}
    emb_a, emb_v, n_batches = [], [], 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        b = {k: v.to(device) for k, v in batch.items()}
        out = objective(b["audio"], b["video"], b["noise_a"], b["noise_v"], gather=False)
        for k in sums:
            sums[k] += float(out[k])
        enc = model.encode(b["audio"], b["video"])
        emb_a.append(enc.audio.float())
        emb_v.append(enc.visual.float())
        n_batches += 1
    model.train()
    a = torch.nn.functional.normalize(torch.cat(emb_a), dim=-1)
    v = torch.nn.functional.normalize(torch.cat(emb_v), dim=-1)
    sim = a @ v.t()
    target = torch.arange(len(sim), device=sim.device)
    return {**{f"val_{k}": s / n_batches for k, s in sums.items()},
            "val_r1_audio_to_visual": float((sim.argmax(1) == target).float().mean()),
            "val_r1_visual_to_audio": float((sim.argmax(0) == target).float().mean()), "val_clips": len(sim)}


def pretrain(cfg: PretrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train; returns the path of the last checkpoint (``<out>/last.pt``)."""
    rank, world, dev = init_distributed(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / "last.pt"
    state = None
    if resume:
        if not ckpt_path.exists():
            raise UsageError(f"{ckpt_path}: nothing to resume")
        obj = read_checkpoint(ckpt_path)
        state = obj["extra"]["train_state"]
        saved = state["config"]
        saved["betas"] = tuple(saved["betas"])
        cfg = dataclasses.replace(PretrainConfig(**saved), max_steps=cfg.max_steps, epochs=cfg.epochs)
        model = build_model(ModelInfo.from_dict(obj["config"]))
        load_state_dict_strict(model, obj["state_dict"], str(ckpt_path))
    else:
        torch.manual_seed(cfg.seed)
        model = _build_model(cfg)
        if cfg.init != "scratch":
            load_initial_weights(model, cfg.init, cfg.video_patch_init)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model.to(dev).train()
    spec = model.info.preprocess

    refs = find_videos(cfg.inputs, include=tuple(cfg.include), exclude=tuple(cfg.exclude))
    train_videos, val_videos = split_validation(usable_videos(refs, spec), cfg.val_fraction, cfg.seed)
    if not train_videos:
        raise UsageError("no usable training videos (readable, with audio, long enough)")
    noise = "normal" if model.info.family == "social-mae" else "uniform"
    make_ds = lambda videos, random: TrainClips(  # noqa: E731
        videos, spec, noise, model.num_audio_tokens, model.num_video_tokens, cfg.seed,
        cfg.clips_per_video if random else None, random_windows=random)
    train_ds = make_ds(train_videos, True)
    val_ds = make_ds(val_videos, False) if val_videos else None
    sampler = GlobalBatchSampler(len(train_ds), cfg.batch_size, rank, world, cfg.seed)
    steps_per_epoch = sampler.batches_per_epoch() // cfg.accum_steps
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_ds)} training clips are fewer than one global batch "
                         f"({cfg.batch_size} x {world} processes x {cfg.accum_steps} accumulation steps)")

    objective = PretrainObjective(model, cfg.mask_ratio_a, cfg.mask_ratio_v, cfg.mae_weight, cfg.contrast_weight)
    # every block carries three sets of norms and only some are used on each path: unused parameters exist
    wrapped = torch.nn.parallel.DistributedDataParallel(objective, find_unused_parameters=True) \
        if world > 1 else objective
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, betas=cfg.betas)
    scheduler = make_scheduler(optimizer, steps_per_epoch, cfg.warmup_steps, cfg.lr_decay_start,
                               cfg.lr_decay_every, cfg.lr_decay)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    total_steps = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps,
                                                                                  steps_per_epoch * cfg.epochs)
    train_log = CsvLog(out / "train_log.csv", ["step", "epoch", "lr", *LOSS_TERMS, "clips_per_s"],
                       step if resume else None) if rank == 0 else None
    val_log = CsvLog(out / "val_log.csv", ["step", "epoch", "val_loss_mae_a", "val_loss_mae_v", "val_loss_c",
                                           "val_r1_audio_to_visual", "val_r1_visual_to_audio", "val_clips"],
                     step if resume else None) if rank == 0 and val_ds else None

    def save() -> None:
        if rank == 0:
            train_state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "config": {**asdict(cfg), "betas": list(cfg.betas)}}
            save_checkpoint(model, ckpt_path, extra={"train_state": train_state})
        barrier()

    cuda = dev.type == "cuda"
    bar = tqdm(total=total_steps, initial=step, unit="step", desc="pretrain", disable=not progress or rank != 0,
               file=sys.stderr)
    epoch = step // steps_per_epoch
    while step < total_steps and epoch < cfg.epochs:
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch, start_batch=(step - epoch * steps_per_epoch) * cfg.accum_steps)
        loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.workers, pin_memory=cuda,
                            worker_init_fn=worker_init)
        sums, n_micro, n_clips, t0 = {k: 0.0 for k in LOSS_TERMS}, 0, 0, time.perf_counter()
        for batch in loader:
            b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            n_micro += 1
            last_micro = n_micro % cfg.accum_steps == 0
            sync = contextlib.nullcontext() if last_micro or world == 1 else wrapped.no_sync()
            with sync, torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                terms = wrapped(b["audio"], b["video"], b["noise_a"], b["noise_v"])
                if not math.isfinite(float(terms["loss"].detach())):
                    raise FloatingPointError(f"non-finite loss at step {step + 1}: {float(terms['loss'].detach())}")
                (terms["loss"] / cfg.accum_steps).backward()
            for k in LOSS_TERMS:
                sums[k] += float(mean_over_processes(terms[k].float()))
            n_clips += len(b["audio"]) * world
            if not last_micro:
                continue
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            row = {k: sums[k] / cfg.accum_steps for k in LOSS_TERMS}
            rate = n_clips / (time.perf_counter() - t0)
            if train_log:
                train_log.write({"step": step, "epoch": epoch, "lr": lr, **row, "clips_per_s": round(rate, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", clips_s=f"{rate:.1f}")
            sums, n_clips, t0 = {k: 0.0 for k in LOSS_TERMS}, 0, time.perf_counter()
            if step % cfg.checkpoint_every == 0:
                save()
            if step >= total_steps:
                break
        epoch_done = step % steps_per_epoch == 0
        if val_ds is not None and epoch_done:
            if rank == 0:
                val_log.write({"step": step, "epoch": epoch, **validate(objective, val_ds, cfg.batch_size, dev)})
            barrier()
        if epoch_done:
            epoch += 1
    save()
    bar.close()
    cleanup()
    return ckpt_path
