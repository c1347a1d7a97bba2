"""Command line: a thin click layer over the library (one function per command).

Exit codes of ``socialfeat extract``: 0 every video processed cleanly;
3 finished, but at least one video failed or was damaged (see the errors
table); 1 the run could not start or crashed (nothing new assembled);
2 usage error (an output folder that cannot be written, or an output that
another run is writing, included); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). After the last
two, every video finished so far is in the journal: the same command resumes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

import click

from pretraining.cli_options import config_from_options, config_options, given_settings
from pretraining.config import PretrainConfig
from socialfeat import __version__
from socialfeat.choices import EXTRACT_CHOICES
from socialfeat.clips import MIN_SECONDS

EXIT_PARTIAL = 3
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``extract`` or ``pretrain`` (a cluster job at its time limit or requeued, ``kill``): the run
    stops as Ctrl-C stops it, so that finished videos still queued for the journal are written
    and the workers are stopped, instead of the process ending mid-write."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated in the main thread (once: a second one during the clean-up is ignored).
    Called from another thread (the command invoked from a program's thread), signals stay as they are."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Seconds(click.ParamType):
    """A finite number of seconds, at least ``minimum``: click's FloatRange lets NaN (which never
    ends the clip planning) and inf through."""

    name = "seconds"

    def __init__(self, minimum: float):
        self.minimum = minimum

    def convert(self, value, param, ctx) -> float:
        import math

        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or seconds < self.minimum:
            self.fail(f"{value!r}: give a finite number of seconds, at least {self.minimum}", param, ctx)
        return seconds


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _segments_source(values: tuple[str, ...]):
    """--segments: 'speech', one CSV, or annotation files / folders (one or several)."""
    from socialfeat.annotations import is_annotation_source

    if not values:
        return None
    if len(values) == 1 and values[0] == "speech":
        return "speech"
    missing = [v for v in values if not Path(v).exists()]
    if missing:
        raise click.BadParameter(f"{missing[0]!r} is neither a file, a folder nor 'speech'", param_hint="--segments")
    if is_annotation_source(values):
        return values[0] if len(values) == 1 else list(values)
    if len(values) == 1 and Path(values[0]).is_file():
        return values[0]
    raise click.BadParameter("give one CSV, 'speech', or .eaf/.TextGrid files and folders", param_hint="--segments")


@contextlib.contextmanager
def _fatal_errors_as_one_line():
    """socialfeat's own errors (missing weights, a bad checkpoint, segments or labels file)
    end the command with one line on stderr: exit 2 for a usage problem, 1 otherwise.
    Running out of GPU memory gets a hint. Anything else is a bug and keeps its traceback."""
    import torch

    from socialfeat.errors import SocialfeatError, UsageError

    try:
        yield
    except SocialfeatError as e:
        logging.getLogger(__name__).debug("fatal error", exc_info=True)  # traceback with -vv
        click.echo(f"socialfeat: error: {e}", err=True)
        sys.exit(EXIT_USAGE if isinstance(e, UsageError) else EXIT_FATAL)
    except torch.cuda.OutOfMemoryError:
        logging.getLogger(__name__).debug("out of memory", exc_info=True)
        click.echo("socialfeat: error: the GPU ran out of memory; try a smaller --batch-size", err=True)
        sys.exit(EXIT_FATAL)


class _Commands(click.Group):
    """The command group; Ctrl-C (and SIGTERM in extract) says what became of the run instead of
    click's bare 'Aborted!'."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            terminated = isinstance(e, Terminated)
            click.echo(f"\nsocialfeat: {'terminated (SIGTERM)' if terminated else 'interrupted'}; every finished "
                       "video, and every finished 10-minute part of a long one, is kept: run the same command again to resume",
                       err=True)
            sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def weights_to_load(model: str, weights: str | None) -> str:
    """One rule: --model takes a registry name (see `socialfeat models`), --weights a file."""
    from socialfeat.architectures import list_architectures
    from socialfeat.models import list_pretrained

    if weights is not None:
        if not Path(weights).is_file():
            hint = f"; {weights!r} is a registry name: use --model {weights}" if weights in list_pretrained() else ""
            raise click.BadParameter(f"no such file: {weights}{hint}", param_hint="--weights")
        return weights
    if model in list_pretrained():
        return model
    if Path(model).exists():
        raise click.BadParameter(f"{model!r} is a file: use --weights {model}", param_hint="--model")
    what = "an architecture without released weights (use it with `socialfeat pretrain --arch`)" \
        if model in list_architectures() else "not a registry name"
    raise click.BadParameter(f"{model!r} is {what}; known models: {', '.join(list_pretrained())}; "
                             "a checkpoint file goes to --weights", param_hint="--model")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="socialfeat")
@click.option("-v", "--verbose", count=True, help="More log output (stderr).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def main(verbose: int, quiet: bool) -> None:
    """Face and voice descriptors for behavioral research (CAV-MAE / Social-MAE)."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("names", nargs=-1)
@click.option("--download", is_flag=True,
              help="Download NAMES into the cache now (e.g. on a login node, before jobs on offline compute nodes).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Weights cache (default $SOCIALFEAT_HOME or ~/.cache/socialfeat).")
@click.option("--no-progress", is_flag=True, help="Hide download progress bars.")
def models(names: tuple[str, ...], download: bool, cache_dir: str | None, no_progress: bool) -> None:
    """List the named weights and whether they are cached; with NAMES, describe them (task, labels,
    label order); with --download, fetch them. SOCIALFEAT_OFFLINE=1 forbids any download."""
    from socialfeat.heads import supply_option
    from socialfeat.models import get_pretrained_cfg, list_pretrained
    from socialfeat.models.hub import cache_state, fetch

    if download and not names:
        raise click.UsageError("name the models to download, e.g. `socialfeat models --download social-mae`")
    with _fatal_errors_as_one_line():
        cfgs = [get_pretrained_cfg(n) for n in names]  # an unknown name fails before any download
        if download:
            for cfg in cfgs:
                fetch(cfg.name, cache_dir, progress=not no_progress, supply=supply_option(cfg.name))
                click.echo(f"{cfg.name}: {_cache_text(cache_state(cfg.name, cache_dir), full=True)}")
            return
    if names:
        for cfg in cfgs:
            _describe_model(cfg, cache_state(cfg.name, cache_dir))
        return
    for name in list_pretrained():
        cfg = get_pretrained_cfg(name)
        task = f" [{cfg.task_name}: {', '.join(cfg.label_names[:6])}{'...' if len(cfg.label_names) > 6 else ''}]" \
            if cfg.task_name else ""
        click.echo(f"{name:24s} {cfg.kind:8s} {_cache_text(cache_state(name, cache_dir)):40s} {cfg.description}{task}")
        click.echo(f"{'':24s} source: {cfg.url or f'no public URL (use {supply_option(name)})'}")


def _cache_text(state, full: bool = False) -> str:
    """'not cached', or the size and the recorded digest (short unless ``full``)."""
    if state.size is None:
        return f"not cached ({state.path})" if full else "not cached"
    digest = state.sha256 if full else (state.sha256 or "")[:12]
    where = f"{state.path}, " if full else ""
    return f"cached ({where}{state.size / 2**20:.0f} MiB, {f'sha256 {digest}' if digest else 'not verified yet'})"


def _describe_model(cfg, state) -> None:
    from socialfeat.heads import supply_option

    labels = ", ".join(cfg.label_names[:12]) + (f", ... ({len(cfg.label_names)} in all)"
                                               if len(cfg.label_names) > 12 else "")
    rows = [("description", cfg.description), ("kind", f"{cfg.kind} (architecture {cfg.arch})"),
            ("task", f"{cfg.task_name} ({cfg.task})" if cfg.task else "none (embeddings only)")]
    if cfg.task:
        rows += [("labels", labels), ("label order", cfg.label_order_note or "as published")]
    rows += [("source", cfg.url or f"no public URL (use {supply_option(cfg.name)})"), ("origin", cfg.origin),
             ("license", cfg.license), ("file", _cache_text(state, full=True))]
    click.echo(cfg.name)
    for key, value in rows:
        click.echo(f"  {key + ':':13s} {value}")


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output HDF5 file (.h5), or .csv for one flat CSV with embeddings.")
@click.option("--file-list", type=click.Path(exists=True, dir_okay=False), help="Text/CSV file listing videos.")
@click.option("--include", multiple=True, help="Glob of files to take (relative path or name); repeatable.")
@click.option("--exclude", multiple=True, help="Glob of files to skip; repeatable.")
@click.option("--model", default="social-mae", help="Registry name of the weights (see `socialfeat models`).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="A checkpoint file (socialfeat or official); overrides --model.")
@click.option("--clip-seconds", type=Seconds(MIN_SECONDS), default=None,
              help=f"Window length, at least {MIN_SECONDS} s [default: the model's, 4 s Social-MAE, 10 s CAV-MAE].")
@click.option("--hop-seconds", type=Seconds(MIN_SECONDS), default=None,
              help=f"Step between window starts, at least {MIN_SECONDS} s [default: the window length].")
@click.option("--segments", multiple=True, metavar="CSV|speech|EAF|TEXTGRID|FOLDER",
              help="CSV with video,start,end (+ any columns to carry): clips come from these segments; "
                   "'speech': clips inside detected speech (Silero VAD); or ELAN .eaf / Praat .TextGrid files "
                   "or a folder of them (repeatable): each annotation is a segment (tier, value, annotation_file).")
@click.option("--annotate", multiple=True, type=click.Path(exists=True), metavar="EAF|TEXTGRID|FOLDER",
              help="Keep the clips as planned and add, for each annotation tier, the value covering most of the "
                   "clip (<tier>) and the share of the clip it covers (<tier>_coverage); repeatable.")
@click.option("--tiers", default="", show_default=False,
              help="Comma-separated annotation tiers to use [default: every time-aligned tier].")
@click.option("--keep-empty", is_flag=True, help="Empty TextGrid intervals are annotations too (not gaps).")
@click.option("--annotation-map", type=click.Path(exists=True, dir_okay=False), metavar="CSV",
              help="CSV with columns annotation_file, video: which annotation file belongs to which video "
                   "[default: ELAN's media path, then the file name].")
@click.option("--missing-audio", type=click.Choice(EXTRACT_CHOICES["missing_audio"]), default="nan",
              help="Videos without audio: NaN audio/joint embeddings, or embed silence.")
@click.option("--csv", "csv_dir", type=click.Path(file_okay=False), help="Also write videos/clips/errors CSVs here.")
@click.option("--csv-embeddings", is_flag=True, help="Put embeddings (wide columns) into the clips CSV.")
@click.option("--tasks", default="", help="Comma-separated predictors: NAME (released finetuned model, e.g. "
              "emotion,laughter,personality) or NAME=PATH (head from `socialfeat finetune`, or a finetuned checkpoint).")
@click.option("--crop", type=click.Choice(EXTRACT_CHOICES["crop"]), default="none",
              help="face: feed square crops around detected faces (VoxCeleb2-like framing) instead of the frame.")
@click.option("--faces", type=click.Choice(EXTRACT_CHOICES["faces"]), default="main",
              help="With --crop face: the main face track, or one row per face track (a `track` column).")
@click.option("--require-face", is_flag=True, help="With --crop face: do not embed clips without a face.")
@click.option("--shard", default=None, metavar="I/N",
              help="Process only shard I of N (e.g. $SLURM_ARRAY_TASK_ID/N); combine with `socialfeat merge`.")
@click.option("--engine", type=click.Choice(EXTRACT_CHOICES["engine"]), default="local",
              help="local: decoding worker processes on this machine; ray: CPU tasks + encoder actors on a Ray cluster.")
@click.option("--address", default=None, help="With --engine ray: cluster address ('auto' to join a running one).")
@click.option("--device", type=click.Choice(EXTRACT_CHOICES["device"]), default="auto")
@click.option("--precision", type=click.Choice(EXTRACT_CHOICES["precision"]), default="auto",
              help="auto: bf16 autocast on CUDA, exact fp32 on the CPU. fast: the fastest approximate precision "
                   "of the device: bf16 on CUDA and on CPUs with AMX (2.5x fp32), int8 linear layers on other CPUs "
                   "(1.4-1.7x fp32 end to end); embeddings at cosine >= 0.999 to fp32 (docs/performance.md). "
                   "bf16 and int8 force one of them.")
@click.option("--embeddings", "embedding_kinds", default="all", metavar="all|KINDS",
              help="Embeddings to compute: all, or a comma-separated subset of joint,audio,visual. "
                   "'joint' alone skips the audio- and visual-only passes (about 7 % faster); "
                   "the others are NaN in the output.")
@click.option("--compile", "compile_model", is_flag=True,
              help="Compile the model (torch.compile) on CUDA, for runs where the GPU, not decoding, is the "
                   "bottleneck; costs about 25 s once.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Clips per forward pass [default: 16 on a GPU, 2 on the CPU, where small batches run faster].")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding worker processes [default: all cores but one with a GPU, 2 on the CPU]. With 0, "
                   "decoding runs in the main process: a crashing or stalling video then stops the run.")
@click.option("--retry-failed", is_flag=True,
              help="Process again every video an earlier run journalled with problems, including those that "
                   "failed for a reason in their own bytes or crashed their worker twice.")
@click.option("--video-timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Stop a video whose decoding makes no progress for this long (it becomes an error row) "
                   "[default: 120 s + twice the recording's duration].")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def extract(inputs, output, file_list, include, exclude, model, weights, clip_seconds, hop_seconds, segments,
            annotate, tiers, keep_empty, annotation_map, missing_audio, csv_dir, csv_embeddings, tasks, crop, faces,
            require_face, shard, engine, address, device, precision, embedding_kinds, compile_model, batch_size,
            workers, retry_failed, video_timeout, no_progress) -> None:
    """Embed every clip of the videos in INPUTS (directories are walked recursively)."""
    from socialfeat.export import export_csv, h5_to_flat_csv
    from socialfeat.extract import extract as run_extract

    if not inputs and not file_list:
        raise click.UsageError("give at least one input directory/file or --file-list")
    segments = _segments_source(segments)
    shard_pair = None
    if shard:
        try:
            shard_pair = tuple(int(x) for x in shard.split("/"))
            assert len(shard_pair) == 2 and 1 <= shard_pair[0] <= shard_pair[1]
        except (ValueError, AssertionError):
            raise click.BadParameter(f"expected I/N with 1 <= I <= N, got {shard!r}", param_hint="--shard") from None
    out = Path(output)
    as_csv = out.suffix.lower() == ".csv"
    h5_out = out.with_name(out.name + ".h5") if as_csv else out
    weights_to_load(model, weights)
    with _fatal_errors_as_one_line(), _sigterm_as_interrupt():
        _refuse_foreign_csvs([out] if as_csv else [], csv_dir)
        summary = run_extract(list(inputs), h5_out, model=model, weights=weights, file_list=file_list,
                              include=tuple(include), exclude=tuple(exclude), clip_seconds=clip_seconds,
                              hop_seconds=hop_seconds, segments=segments, annotate=list(annotate) or None,
                              tiers=_names(tiers) or None, keep_empty=keep_empty, annotation_map=annotation_map,
                              missing_audio=missing_audio,
                              batch_size=batch_size, workers=workers, device=device, progress=not no_progress,
                              tasks=[t for t in tasks.split(",") if t.strip()], shard=shard_pair,
                              engine=engine, address=address, crop=crop, faces=faces, require_face=require_face,
                              precision=precision, embeddings=embedding_kinds, retry_failed=retry_failed,
                              video_timeout=video_timeout, compile_model=compile_model,
                              command_line=shlex.join(["socialfeat"] + sys.argv[1:]))
    if as_csv:
        h5_to_flat_csv(h5_out, out)
    if csv_dir:
        export_csv(h5_out, csv_dir, embeddings=csv_embeddings)
    quiet = click.get_current_context().find_root().params.get("quiet")  # -q: only errors on stderr
    if not quiet:
        click.echo(f"{summary.output if not as_csv else out}: {summary.n_videos} videos, {summary.n_clips} clips, "
                   f"{summary.n_failed} with problems ({summary.n_reused} reused from an earlier run"
                   + (f", {summary.n_resumed} resumed part-way" if summary.n_resumed else "") + ")"
                   + (f"; {summary.n_unreadable_folders} input folder(s) could not be read (see the errors table)"
                      if summary.n_unreadable_folders else ""), err=True)
    if csv_dir and not quiet:
        click.echo(f"CSVs in {csv_dir}: videos.csv, clips.csv ("
                   + ("with embeddings" if csv_embeddings else "no embeddings; add --csv-embeddings for them")
                   + "), errors.csv", err=True)
    if not summary.all_ok:
        sys.exit(EXIT_PARTIAL)


def _refuse_foreign_csvs(files: list[Path], csv_dir: str | None) -> None:
    """Before any work: the CSVs extract will write may only replace CSVs socialfeat wrote."""
    from socialfeat.outputs import is_socialfeat_csv, refuse_foreign_output

    tables = [Path(csv_dir) / name for name in ("videos.csv", "clips.csv", "errors.csv")] if csv_dir else []
    for path in files + tables:
        refuse_foreign_output(path, is_socialfeat_csv, "a CSV table socialfeat wrote")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True))
@config_options(PretrainConfig, skip=("inputs",), types={"clip_seconds": Seconds(MIN_SECONDS)})
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where its last checkpoint stopped "
              "(a folder without a checkpoint starts a new run, so a job script can always pass it).")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out (its checkpoint and logs) with a new one.")
@click.option("--no-progress", is_flag=True)
def pretrain(inputs, resume, overwrite, no_progress, **settings) -> None:
    """Self-supervised pretraining on the videos in INPUTS; checkpoints feed `extract --weights`.
    Ctrl-C or SIGTERM saves the current step; --resume continues the run (with its own settings:
    --epochs, --max-steps, --checkpoint-every, --workers and --device may be given anew)."""
    from pretraining import pretrain as run_pretrain

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: choose one")
    cfg = config_from_options(PretrainConfig, settings, inputs=list(inputs))
    given = given_settings(PretrainConfig, click.get_current_context()) | {"inputs"}
    try:
        with _fatal_errors_as_one_line(), _sigterm_as_interrupt():
            path = run_pretrain(cfg, resume=resume, progress=not no_progress, overwrite=overwrite, given=given)
    except KeyboardInterrupt as e:
        _pretrain_stopped(e, list(inputs), cfg.out)
    click.echo(f"checkpoint: {path}", err=True)


def _pretrain_stopped(e: KeyboardInterrupt, inputs: list[str], out: str) -> None:
    """One line after Ctrl-C / SIGTERM: what was saved and the command that continues the run;
    exit 130 / 143."""
    from pretraining.engine import Interrupted

    terminated = isinstance(e, Terminated) or (isinstance(e, Interrupted) and e.signum == signal.SIGTERM)
    checkpoint = Path(out) / "last.pt"
    if isinstance(e, Interrupted):
        saved = f"step {e.step} is saved in {e.checkpoint}"
    elif checkpoint.is_file():
        saved = f"the last checkpoint is {checkpoint}"
    else:
        saved = "nothing was saved yet"
    resume = shlex.join(["socialfeat", "pretrain", *inputs, "--out", out, "--resume"])
    click.echo(f"\nsocialfeat: {'terminated (SIGTERM)' if terminated else 'interrupted'}; {saved}; "
               f"continue with: {resume}", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(exists=True))
@click.option("--task", required=True, help="Name of the task (column prefix of its predictions).")
@click.option("--labels", required=True, type=click.Path(exists=True),
              help="CSV: video, start, end, then one label column or numeric trait columns; or ELAN .eaf / "
                   "Praat .TextGrid files (a file or a folder): the values of one tier (--tiers) are the labels.")
@click.option("--tiers", default="", show_default=False,
              help="With annotation files as labels: the tier whose values are the labels "
              "[default: the only time-aligned tier].")
@click.option("--keep-empty", is_flag=True, help="Empty TextGrid intervals are annotations (a label '') too.")
@click.option("--annotation-map", type=click.Path(exists=True, dir_okay=False), metavar="CSV",
              help="CSV with columns annotation_file, video (see extract).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Head / model checkpoint to write.")
@click.option("--probe", "probe_only", is_flag=True, help="Frozen backbone: fit a head on the embeddings.")
@click.option("--features", type=click.Path(exists=True, dir_okay=False),
              help="With --probe: an existing feats.h5 holding the labelled clips (extracted with --segments "
                   "LABELS; skips extraction). The labels decide which clips are used and their labels.")
@click.option("--model", default="social-mae", help="Backbone registry name.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Backbone checkpoint (overrides --model).")
@click.option("--embedding", type=click.Choice(["joint", "audio", "visual"]), default="joint")
@click.option("--type", "task_type", type=click.Choice(["auto", "classification", "regression"]), default="auto")
@click.option("--label-columns", default="", help="Comma-separated label columns [default: all other columns].")
@click.option("--group-columns", default="", help="Comma-separated grouping columns, e.g. speaker.")
@click.option("--cv", type=click.IntRange(min=0), default=0, help="K grouped folds (0: one grouped split).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[probe: 300 full-batch steps; full: 10]")
@click.option("--lr", type=float, default=None, help="[probe: 1e-2; full: 1e-4 for the backbone]")
@click.option("--head-lr-mult", type=float, default=50.0, help="Full finetuning: head lr = lr x this.")
@click.option("--loss", "regression_loss", type=click.Choice(["l1", "l2"]), default="l1", help="Regression loss.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8)
@click.option("--workers", type=click.IntRange(min=0), default=2)
@click.option("--seed", type=int, default=0)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (and its .metrics.json) if it exists.")
@click.option("--no-progress", is_flag=True)
def finetune(inputs, task, labels, tiers, keep_empty, annotation_map, output, probe_only, features, model, weights,
             embedding, task_type, label_columns, group_columns, cv, val_fraction, epochs, lr, head_lr_mult,
             regression_loss, batch_size, workers, seed, overwrite, no_progress) -> None:
    """Fit a task head (--probe) or finetune the whole model on labelled segments of INPUTS."""
    import json

    from socialfeat.finetune import finetune as run_finetune
    from socialfeat.finetune import json_safe

    if features and not probe_only:
        raise click.UsageError("--features works with --probe only (full finetuning reads the videos)")
    if not inputs and not features:
        raise click.UsageError("give the labelled videos (or --probe --features FEATS.h5)")
    if not features:
        weights_to_load(model, weights)
    try:
        with _fatal_errors_as_one_line(), _sigterm_as_interrupt():
            metrics = run_finetune(list(inputs), labels, output, task, model=model, weights=weights,
                                   tiers=_names(tiers) or None, keep_empty=keep_empty, annotation_map=annotation_map,
                                   probe_only=probe_only, features=features, embedding=embedding,
                                   task_type=task_type, label_columns=_names(label_columns) or None,
                                   group_columns=_names(group_columns), cv=cv, val_fraction=val_fraction,
                                   epochs=epochs, lr=lr, head_lr_mult=head_lr_mult, batch_size=batch_size,
                                   regression_loss=regression_loss, workers=workers, seed=seed,
                                   overwrite=overwrite, progress=not no_progress)
    except KeyboardInterrupt as e:
        _finetune_stopped(e, output, probe_only, features)
    click.echo(json.dumps(json_safe({"held_out": metrics["held_out"], "baseline": metrics["baseline"]}), indent=1,
                          allow_nan=False), err=True)


def _finetune_stopped(e: KeyboardInterrupt, output: str, probe_only: bool, features: str | None) -> None:
    """One line after Ctrl-C / SIGTERM: what a rerun of the same command takes up again; exit 130 / 143."""
    from socialfeat.finetune_progress import progress_path

    terminated = isinstance(e, Terminated)
    if not probe_only:
        kept = f"; every finished epoch is kept ({progress_path(output)}): run the same command again to resume"
    elif features is None:
        kept = "; the clips' features extracted so far are kept: run the same command again to resume"
    else:
        kept = ""  # (a probe on a features file takes seconds)
    click.echo(f"\nsocialfeat: {'terminated (SIGTERM)' if terminated else 'interrupted'}{kept}", err=True)
    sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
def report(path: str, output: str) -> None:
    """Write a self-contained HTML report (provenance, QC, errors, timelines, embedding overview) of PATH."""
    from socialfeat.report import build_report
    from socialfeat.store import check_features_file

    with _fatal_errors_as_one_line():
        check_features_file(path)
        click.echo(f"report: {build_report(path, output)}", err=True)


@main.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def merge(parts, output) -> None:
    """Combine the outputs of `extract --shard I/N` runs (same model and settings) into OUTPUT."""
    from socialfeat.merge import merge as run_merge

    with _fatal_errors_as_one_line():
        path = run_merge(list(parts), output, command_line=shlex.join(["socialfeat"] + sys.argv[1:]))
    click.echo(f"merged {len(parts)} files into {path}", err=True)


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def info(path: str) -> None:
    """Summarise a features file: provenance, counts, statuses, errors."""
    from socialfeat.export import describe
    from socialfeat.store import check_features_file

    with _fatal_errors_as_one_line():
        check_features_file(path)
        click.echo(describe(path))


@main.command()
@click.option("--out", "out", default="socialfeat-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's videos, model, features and report.")
def demo(out: str) -> None:
    """Try socialfeat offline in about a minute: makes three short talking-face videos and a tiny
    untrained model, runs extract, loads the features and writes the report (numbers mean nothing)."""
    from socialfeat.demo import run_demo

    if Path(out).exists() and any(Path(out).iterdir()):
        raise click.BadParameter(f"{out} is not empty; give a new folder", param_hint="--out")
    with _fatal_errors_as_one_line():
        result = run_demo(out)
    click.echo(f"""demo finished in {result.seconds:.0f} s, everything is in {result.folder}/
  videos:    {result.folder / 'videos'}/ ({len(result.videos)} files, P01..P03/session1.mp4)
  model:     {result.weights} (tiny and untrained: the numbers mean nothing)
  features:  {result.features} ({result.n_clips} clips); in Python:
               import socialfeat; df = socialfeat.load_features("{result.features}")
  report:    {result.report} (open it in a browser)
next: socialfeat extract YOUR_VIDEOS/ -o feats.h5  (downloads Social-MAE on first use)""")


def run() -> None:
    """The ``socialfeat`` command: ``main`` with everything imported so far frozen out of the
    garbage collector (``gc.freeze``): forked decoding workers do not copy those pages when a
    collection would touch them, and the exit skips them (0.26 s less of every command here)."""
    gc.freeze()
    main()


if __name__ == "__main__":
    run()
