"""``socialfeat extract``: videos in, per-clip embeddings and predictions out.

walk inputs -> plan clips -> decode -> preprocess (worker processes,
``pipeline.py`` in ``workers.py``) -> encode in batches that span videos (here) ->
journal each finished video (``store.Journal``) -> assemble the HDF5
(``store.assemble_output``).

A rerun reuses what the journal holds when nothing that changes a number has
changed (``run_fingerprint`` + the file's size and mtime), and tries again the
videos that failed for a reason outside their own bytes (see ``worth_retrying``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from socialfeat import __version__
from socialfeat.annotations import (
    check_column_names,
    is_annotation_source,
    label_clips,
    load_annotations,
    overruns,
    segments_table,
)
from socialfeat.atomic import stale_temporaries, stale_temporaries_in
from socialfeat.choices import EXTRACT_CHOICES
from socialfeat.clips import MIN_SECONDS, SegmentsError, match_segments, read_segments
from socialfeat.encoder import (
    BatchEncoder,
    build_predictors,
    prepare_models,
    resolve_device,
    resolve_embeddings,
    resolve_precision,
    video_result,
)
from socialfeat.errors import UsageError, one_line
from socialfeat.heads import check_fitted_settings, released_task_model
from socialfeat.media import available_cores
from socialfeat.models import load_model
from socialfeat.models.checkpoint import own_memory
from socialfeat.models.digest import canonical_json, payload_digest
from socialfeat.outputs import claim_output, refuse_foreign_output
from socialfeat.pipeline import (
    SPAN_SECONDS,
    ClipItem,
    PartDone,
    PlanSettings,
    VideoDone,
    spans_left,
)
from socialfeat.store import (
    CLIP_COLUMNS,
    Failure,
    Journal,
    JournalledVideo,
    SpanResult,
    VideoResult,
    VideoStatus,
    assemble_output,
    differing_keys,
    is_features_file,
)
from socialfeat.walk import VIDEO_EXTENSIONS, VideoRef, find_videos
from socialfeat.workers import Resumed, WorkerPool, in_process_items

log = logging.getLogger(__name__)
DEFAULT_MODEL = "social-mae"
# clip columns besides store.CLIP_COLUMNS and segment columns: planning extras and load_features' video facts
RESERVED_COLUMNS = {"video", "start", "end", "segment_index", "segment_row", "track", "face_fraction", "face_boxes",
                    "speech_fraction", "video_duration_s", "fps", "width", "height", "video_status"}
EMBEDDING_COLUMN = re.compile(r"(joint|audio|visual)_\d{3,}")  # load_features' embedding columns


def is_taken_column(name: str) -> bool:
    """Whether a column carried into the clips (a segments CSV's, an ``--annotate`` tier's, a task's
    ``<task>_<label>``) would overwrite or duplicate one socialfeat writes: the clips table's own,
    planning extras, or what load_features adds (video facts, embedding columns)."""
    return name in CLIP_COLUMNS or name in RESERVED_COLUMNS or EMBEDDING_COLUMN.fullmatch(name) is not None


def prediction_columns(predictors: list) -> dict[str, str]:
    """``<task>_<label>`` columns of the predictors (as load_features names them) -> their task;
    refused at once when two coincide or one is taken (found only at the end otherwise: a
    traceback, and a file that load_features cannot read)."""
    columns: dict[str, str] = {}
    for p in predictors:
        for label in p.label_names:
            column = f"{p.name}_{label}"
            if column in columns or is_taken_column(column):
                other = f"task {columns[column]!r}'s" if column in columns else "a clip column"
                raise UsageError(f"task {p.name!r} ({p.source or 'the model'}): its label {label!r} makes the "
                                 f"column {column!r}, which clashes with {other}; give the task another name "
                                 "(--tasks NAME=PATH)")
            columns[column] = p.name
    return columns


def check_carried_columns(predictors: list, seg_table, segments, labels) -> None:
    """Segment columns and ``--annotate`` tier columns must not coincide with a task's predictions."""
    predicted = prediction_columns(predictors)
    carried = {k: f"column {k!r} of {_as_setting(segments)}" for segs in (seg_table or {}).values()
               for seg in segs for k in seg}
    for tier in labels.tiers if labels is not None else ():
        carried.update({c: f"the columns of tier {tier!r} (--annotate)" for c in (tier, f"{tier}_coverage")})
    for column, what in carried.items():
        if column in predicted:
            raise UsageError(f"{what} clashes with the prediction column {column!r} of task "
                             f"{predicted[column]!r}; rename one of them")


@dataclass
class ExtractSummary:
    output: Path
    n_videos: int
    n_clips: int
    n_failed: int  # videos with status other than ok
    n_reused: int  # videos taken from the journal of an earlier run
    statuses: dict[str, int] = field(default_factory=dict)
    n_resumed: int = 0  # long recordings taken up after the parts an earlier run finished
    n_unreadable_folders: int = 0  # input folders that could not be listed (their videos are missing)

    @property
    def all_ok(self) -> bool:
        return self.n_failed == 0 and self.n_unreadable_folders == 0


MAX_STRIKES = 2  # a video that crashed or stalled its worker in this many runs is not retried unasked


def library_versions() -> dict[str, str]:
    """Versions of the code that turns a video into numbers (decoder, fbank, model)."""
    import av
    import torch
    import torchaudio

    return {"socialfeat": __version__, "torch": torch.__version__, "torchaudio": torchaudio.__version__,
            "av": av.__version__, "libavcodec": str(av.library_versions.get("libavcodec", ""))}


def task_digest(task) -> str:
    """SHA-256 of what a predictor computes with: a head file's content, a whole model's weights
    (a head refitted in place under the same name must not bring back old predictions)."""
    from socialfeat.models.digest import file_digest

    own = getattr(getattr(task.model, "info", None), "sha256", None)
    if task.model is not None and own:
        return own
    return file_digest(task.source) if task.source and Path(task.source).is_file() else ""


def run_record(info, plan: PlanSettings, predictors: list, device: str) -> str:
    """Everything of a run that changes a number, as canonical JSON: weights, model and
    preprocessing, clip plan and precision, task predictors by content, versions of socialfeat
    and of its decoding and model libraries, device type. Its digest is part of every video's
    fingerprint; journal parts keep it, so that a rerun can say what changed (run_changes)."""
    payload = {"weights": info.sha256, "model": info.to_dict(), "plan": asdict(plan),
               "tasks": [dict(p.meta(), sha256=task_digest(p)) for p in predictors],
               "versions": library_versions(), "device": device}
    return canonical_json(payload)


def run_fingerprint(info, plan: PlanSettings, predictors: list, device: str) -> str:
    """The digest of run_record."""
    return _sha256(run_record(info, plan, predictors, device))


def run_changes(old: str, new: str) -> list[str]:
    """What differs between two run records: 'name then -> now' for plain values (the plan and the
    library versions item by item), the name alone for the model configuration and the tasks."""
    try:
        before, now = json.loads(old), json.loads(new)
    except ValueError:
        return ["made by an earlier socialfeat"]
    changes = []
    for key in differing_keys(before, now):
        then, value = before.get(key), now.get(key)
        if key in ("plan", "versions") and isinstance(then, dict) and isinstance(value, dict):
            changes += [f"{k} {_brief(then.get(k))} -> {_brief(value.get(k))}" for k in differing_keys(then, value)]
        elif isinstance(then, (dict, list)) or isinstance(value, (dict, list)):
            changes.append(key)
        else:
            changes.append(f"{key} {_brief(then)} -> {_brief(value)}")
    return changes


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:16] + '..."'


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def inputs_record(inputs: list[str | Path], file_list: str | Path | None, refs: list[VideoRef]) -> dict[str, Any]:
    """What the run was given and found, before ``--shard``: the resolved inputs, the number of videos and
    a digest of their relative paths. Every shard of a split must have found the same videos (merge)."""
    roots = [str(Path(p).resolve()) for p in inputs] + ([str(Path(file_list).resolve())] if file_list else [])
    return {"roots": roots, "n_videos": len(refs), "sha256": payload_digest([r.relpath for r in refs])}


def video_fingerprint(run_key: str, ref: VideoRef, segments, size: int, mtime: float) -> str:
    """The run's fingerprint with one video's file (path, size, mtime) and its segments."""
    return payload_digest({"run": run_key, "path": ref.relpath, "segments": segments, "size": size, "mtime": mtime})


def worth_retrying(done: VideoResult, retry_failed: bool) -> bool:
    """Whether a journalled video (same file, same settings) is processed again.

    A clean video never is. ``retry_failed`` retries every other one. Otherwise: a verdict
    from the file's own bytes (not a video, damaged, too short ...) is kept; a failure to
    read it (I/O error, permissions, an unexpected error) is retried; a video that crashed
    or stalled its worker is retried until it has done so in MAX_STRIKES runs.
    """
    if done.video.get("status") == VideoStatus.OK:
        return False
    if retry_failed:
        return True
    if done.failure in (Failure.CRASH, Failure.TIMEOUT):
        return done.strikes < MAX_STRIKES
    if done.failure == Failure.CONTENT:
        return False
    return done.failure == Failure.TRANSIENT or done.video.get("status") == VideoStatus.ERROR


def in_shard(ref: VideoRef, index: int, count: int) -> bool:
    """Shard ``index`` of ``count`` (1-based) by the video id: stable when files are added."""
    if not 1 <= index <= count:
        raise UsageError(f"shard {index}/{count}: need 1 <= I <= N")
    return int(ref.video_id, 16) % count == index - 1


def segments_for(ref: VideoRef, table: dict[str, list[dict[str, Any]]] | None):
    """A video's segments from a table keyed by relative path (clips.match_segments,
    annotations.segments_table); None: no segments asked for, fixed windows."""
    return None if table is None else table.get(ref.relpath, [])


def fetch_released_weights(model: str, weights: str | Path | None, tasks: list[str], progress: bool) -> None:
    """Download the released weights a run needs before it starts (first use; later runs find them
    cached), with the run's progress setting. A bad ``--tasks`` item fails here, before any work."""
    from socialfeat.heads import HeadMismatchError
    from socialfeat.models import get_pretrained_cfg, list_pretrained
    from socialfeat.models.hub import fetch

    backbone = get_pretrained_cfg(model) if weights is None and model in list_pretrained() else None
    released = [(name.strip(), get_pretrained_cfg(released_task_model(name)))
                for name, _, path in (request.partition("=") for request in tasks) if not path]
    for name, task in released:  # one for another family would be refused once loaded: say so before
        if backbone is not None and task.arch != backbone.arch:  # downloading it (0.7 GB)
            raise HeadMismatchError(f"task {name!r}: {task.name} is a {task.arch} model, the extraction "
                                    f"model {backbone.name} a {backbone.arch} one: they take other inputs; "
                                    f"extract with a {task.arch} model for this task")
    if backbone is not None:
        fetch(model, progress=progress)
    for name, task in released:
        fetch(task.name, progress=progress, supply=f"--tasks {name}=PATH")


def extract(inputs: str | Path | list[str | Path], output: str | Path, model: str = DEFAULT_MODEL,
            weights: str | Path | None = None, *, file_list: str | Path | None = None,
            include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
            clip_seconds: float | None = None, hop_seconds: float | None = None,
            segments: str | Path | list[str | Path] | None = None, missing_audio: str = "nan",
            batch_size: int | None = None, annotate: list[str | Path] | None = None,
            tiers: list[str] | None = None, keep_empty: bool = False, annotation_map: str | Path | None = None,
            workers: int | None = None, device: str = "auto", progress: bool = True, tasks: list[str] = (),
            shard: tuple[int, int] | None = None, engine: str = "local", address: str | None = None,
            crop: str = "none", faces: str = "main", require_face: bool = False, precision: str = "auto",
            frames_on_device: bool | None = None, embeddings: str | tuple[str, ...] = "all",
            retry_failed: bool = False, video_timeout: float | None = None,
            command_line: str | None = None, compile_model: bool = False) -> ExtractSummary:
    """Extract embeddings (and predictions) for every clip of every video into ``output`` (HDF5).

    Resumable: finished videos are journalled in ``<output>.parts`` and reused on
    a rerun when the file (size, mtime) and everything that changes a number are
    unchanged; failed videos are tried again unless they failed for a reason in their
    own bytes (``retry_failed``: all of them; see worth_retrying).
    ``output`` may only replace a socialfeat features file; it is claimed before any work (its folder
    must take files, and no other process may be writing it: outputs.claim_output).
    ``tasks``: extra predictors, each 'NAME' (released finetuned model) or 'NAME=PATH'
    (head from ``socialfeat finetune`` or a finetuned checkpoint); see heads.load_task.
    ``shard`` (i, n): only the videos of shard i of n (1-based; by a hash of the relative
    path, so the split is deterministic); merge the outputs with ``socialfeat merge``.
    ``engine``: 'local' (decoding worker processes, see workers.py) or 'ray' (see ray_engine).
    ``retry_failed``: try again videos that failed for a cause in their own bytes (others always are);
    ``video_timeout``: seconds a video's decoding may stall before it becomes that video's error.
    ``segments``: an annotation CSV, 'speech' for clips inside voice-activity regions, or ELAN /
    Praat files (a file, a folder of them, or a list): each annotation becomes a segment.
    ``annotate``: ELAN / Praat files whose tiers label the clips as planned (``<tier>``,
    ``<tier>_coverage`` columns; see annotations.label_clips). ``tiers``: the tiers to use
    (default every time-aligned tier); ``keep_empty``: empty TextGrid intervals are annotations
    too; ``annotation_map``: a CSV (annotation_file, video) overriding the matching by name / media path.
    ``crop='face'``: square crops around detected faces (``faces='all'``: a row per face track).
    ``precision``: 'fp32', 'bf16' (autocast), 'int8' (int8 linear layers, CPU only), 'auto'
    (bf16 on CUDA, fp32 on the CPU) or 'fast' (bf16 on CUDA and AMX CPUs, int8 on other CPUs).
    ``embeddings``: 'all' or some of 'joint', 'audio', 'visual'; the others are not computed
    (NaN in the output): 'joint' alone skips the audio- and visual-only passes.
    ``batch_size``: clips per forward pass; default 16 on a GPU and 2 on the CPU, where
    small batches stay in cache and run about 15 % faster (docs/performance.md).
    ``workers``: decoding processes; default all cores but one with a GPU, 2 on the CPU
    (where the model, not decoding, sets the pace).
    ``frames_on_device``: resize the sampled frames where the model runs instead of in the
    workers (default: on a GPU with the local engine, where the workers then only decode; not
    across a Ray cluster, whose network would carry 4-5x the bytes; see pipeline.PlanSettings).
    ``video_timeout``: seconds a video's decoding may go without progress before it is stopped
    and recorded as an error (default: 2 minutes plus twice the recording's duration).
    ``compile_model``: torch.compile the model on CUDA (about 25 s once; pays where the GPU, not
    decoding, sets the pace; model_call.ModelCall). Ignored on the CPU, where it measured no gain.
    """
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)  # (one folder or file given alone)
    clip_seconds = checked_seconds(clip_seconds, "clip_seconds")  # before any work: NaN would plan forever
    hop_seconds = checked_seconds(hop_seconds, "hop_seconds")
    check_arguments(missing_audio=missing_audio, crop=crop, faces=faces, require_face=require_face, engine=engine,
                    device=device, precision=precision, batch_size=batch_size, workers=workers,
                    video_timeout=video_timeout)
    output = Path(output)
    refuse_foreign_output(output, is_features_file, "a socialfeat features file")
    journal = Journal(output)
    with claim_output(output, folders=(journal.dir,)):  # one writer; a folder that takes no files fails here
        remove_stale_temporaries(output, journal, before=time.time())
        dev = resolve_device(device)
        precision = resolve_precision(precision, dev)
        embeddings = resolve_embeddings(embeddings)
        batch_size = batch_size or (16 if dev.type == "cuda" else 2)
        if workers is None:  # a GPU waits on decoding: give it every core but the one feeding it
            workers = max(1, available_cores() - 1) if dev.type == "cuda" else 2
        speech = str(segments) == "speech"
        # videos and annotations first: a bad segments or annotation file fails before the model loads
        unreadable: list[tuple[str, str]] = []
        refs = select_videos(inputs, file_list, include, exclude, unreadable)
        found = inputs_record(inputs, file_list, refs)
        seg_table, seg_annotations, labels = read_annotations(segments, annotate, refs, tiers, keep_empty,
                                                              annotation_map)
        if shard is not None:  # after matching annotations, which may name any video of the corpus
            refs = [r for r in refs if in_shard(r, *shard)]
        fetch_released_weights(model, weights, list(tasks), progress)
        # on the CPU until the decoding workers have started (see _run_jobs)
        net = load_model(Path(weights) if weights is not None else model, mapped=True).eval()  # (read as used: see _run_jobs)
        spec = net.info.preprocess
        predictors = build_predictors(net, tasks, torch.device("cpu"))
        check_carried_columns(predictors, seg_table, segments, labels)
        plan = PlanSettings(clip_seconds=clip_seconds or float(spec.clip_seconds), hop_seconds=hop_seconds,
                            missing_audio=missing_audio,
                            speech=speech, crop=crop, faces=faces, require_face=require_face, precision=precision,
                            embeddings=embeddings,
                            raw_frames=(dev.type == "cuda" and engine == "local") if frames_on_device is None
                            else frames_on_device)
        check_fitted_settings(predictors, asdict(plan))  # a head fitted on other embeddings: before any work
        check_optional_extras(plan)
        # compile_model stays out of the fingerprint, like batch_size: it changes which kernels run
        # (fused, reordered float operations), not what is computed; results differ at rounding level
        run = run_record(net.info, plan, predictors, dev.type)
        compiling = compile_model and dev.type == "cuda" and engine == "local"
        if compile_model and not compiling:
            log.warning("--compile: ignored (it compiles the model on CUDA with the local engine only)")
        results, jobs, fingerprints, strikes = reuse_finished(refs, seg_table, journal, run, retry_failed)
        record_kw = dict(journal=journal, fingerprints=fingerprints, results=results, strikes=strikes, run=run)
        resumed = resume_parts(jobs, journal, fingerprints) if engine == "local" else ({}, {})

        if jobs and engine == "ray":
            from socialfeat.ray_engine import run_ray

            if weights is None:
                from socialfeat.models.hub import fetch
                weights = fetch(model)
            bar = tqdm(total=len(jobs), unit="video", desc="videos", disable=not progress, file=sys.stderr)
            with logging_redirect_tqdm(), _Recorder(bar=bar, **record_kw) as record:
                run_ray(jobs, str(weights), list(tasks), spec, plan, batch_size, device, address,
                        record, [p.name for p in predictors], video_timeout)
            bar.close()
        elif jobs:
            with logging_redirect_tqdm():
                _run_jobs(jobs, net, dev, spec, plan, batch_size, workers, progress, record_kw, predictors,
                          video_timeout, compiling, resumed)

        ordered = [results[p] for p in range(len(refs))]
        for r in ordered:
            add_annotation_facts(r, seg_annotations, labels)
        settings = {"clip_seconds": plan.clip_seconds, "hop_seconds": plan.hop_seconds or plan.clip_seconds,
                    "missing_audio": missing_audio, "segments": _as_setting(segments),
                    "annotate": _as_setting(annotate), "tiers": list(tiers or []), "keep_empty": keep_empty,
                    "annotation_map": str(annotation_map or ""),
                    "crop": crop, "faces": faces, "require_face": require_face, "precision": precision,
                    "int8_engine": getattr(net, "int8_engine", ""), "embeddings": list(embeddings),
                    "compile": compiling,
                    "tasks": [dict(p.meta(), sha256=task_digest(p)) for p in predictors]}
        write_output(ordered, output, net, predictors, settings, shard, found, command_line, started,
                     [folder_row(path, cause) for path, cause in unreadable])
        return summarise(ordered, output, n_reused=len(refs) - len(jobs), n_resumed=len(resumed[0]),
                         n_unreadable_folders=len(unreadable))


def check_arguments(*, require_face: bool, batch_size: int | None, workers: int | None,
                    video_timeout: float | None, **choices: str) -> None:
    """What the CLI's option types check, for a call from Python: a misspelt choice would
    otherwise run as the default and be recorded as given, a negative batch fail deep inside."""
    for name, value in choices.items():
        if value not in EXTRACT_CHOICES[name]:
            raise UsageError(f"{name} must be one of {', '.join(map(repr, EXTRACT_CHOICES[name]))}, got {value!r}")
    if (choices["faces"] != "main" or require_face) and choices["crop"] != "face":
        raise UsageError("faces='all' and require_face apply to face crops: give crop='face' (--crop face) too")
    for name, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise UsageError(f"{name} must be a whole number of at least {least}, got {value!r}")
    if video_timeout is not None and not (isinstance(video_timeout, (int, float)) and video_timeout > 0):
        raise UsageError(f"video_timeout must be a positive number of seconds, got {video_timeout!r}")


def checked_seconds(value: float | None, name: str) -> float | None:
    """A window length or hop (None: the default) as a float: finite and at least MIN_SECONDS,
    since NaN never ends the planning loop and 1e-9 plans billions of windows."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < MIN_SECONDS:
        raise UsageError(f"{name} must be a finite number of seconds, at least {MIN_SECONDS}, got {value!r}")
    return seconds


def check_optional_extras(plan: PlanSettings) -> None:
    """Fail before any work, with one message, when an option's extra is not installed."""
    if plan.crop == "face":
        from socialfeat.faces import FaceDetector
        FaceDetector()  # needs OpenCV 4
    if plan.speech:
        from socialfeat.vad import load_vad
        load_vad()  # needs Silero VAD


def select_videos(inputs: list[str | Path], file_list: str | Path | None, include: tuple[str, ...],
                  exclude: tuple[str, ...], unreadable: list[tuple[str, str]] | None = None) -> list[VideoRef]:
    """The input videos, in a stable order; none is a usage error. ``unreadable``: gets the input
    folders that could not be listed (walk.find_videos)."""
    refs = find_videos(list(inputs), file_list=file_list, include=include, exclude=exclude, unreadable=unreadable)
    if not refs:
        raise UsageError(f"no videos found in {', '.join(map(str, inputs)) or file_list} (file types read: "
                         f"{' '.join(VIDEO_EXTENSIONS)}; see also --include/--exclude)")
    return refs


def _as_setting(value) -> str:
    if not value:
        return ""
    return str(value) if isinstance(value, (str, Path)) else ";".join(map(str, value))


def read_annotations(segments, annotate, refs: list[VideoRef], tiers, keep_empty: bool, annotation_map):
    """The segments table (from a CSV or annotation files, same shape), the annotations behind it,
    and the annotations that label clips (``annotate``); matched against every video found.
    ``--annotate`` tiers must not overwrite the clip columns planned."""
    seg_table, seg_annotations, labels = None, None, None
    opts = dict(tiers=tiers, keep_empty=keep_empty, mapping=annotation_map)
    if segments is not None and str(segments) != "speech":
        if is_annotation_source(segments):
            seg_annotations = load_annotations(segments, refs, **opts)
            seg_table = segments_table(seg_annotations)
        elif isinstance(segments, (str, Path)):
            seg_table = match_segments(read_segments(segments, is_taken_column), refs, segments)
        else:
            raise SegmentsError(f"segments: several files are .eaf/.TextGrid files or folders only, got {segments}")
    if annotate:
        labels = load_annotations(annotate, refs, **opts)
        carried = {k for segs in (seg_table or {}).values() for seg in segs for k in seg}
        check_column_names(labels.tiers, carried, is_taken_column)
    return seg_table, seg_annotations, labels


def add_annotation_facts(res: JournalledVideo, seg_annotations, labels) -> None:
    """Annotation columns of a video's clips (``--annotate``; computed at assembly, as its clips are
    read back, so that changing annotations re-embeds nothing) and a warning row for annotations past its end."""
    path = res.video["path"]
    if labels is not None:
        res.edit_clips = partial(label_clips, annotations=labels, video=path)
    duration = res.video.get("duration_s")
    for found in (seg_annotations, labels):
        if found is None:
            continue
        for msg in overruns(found, path, duration):
            log.warning("%s: %s", one_line(path), one_line(msg))
            res.errors.append({"video_id": res.video["video_id"], "path": path, "stage": "annotations",
                               "message": msg})




def remove_stale_temporaries(output: Path, journal: Journal, before: float) -> None:
    """Temporaries that an earlier, killed run left behind (its output's, its CSVs' and its
    journal's), and only those: our own name pattern, not touched since before this run."""
    names = [output] + ([output.with_suffix("")] if output.name.endswith(".csv.h5") else [])  # (and feats.csv)
    stale = [t for n in names for t in stale_temporaries(n, before)]
    stale += stale_temporaries_in(journal.dir, before, r"[0-9a-f]{16}(?:\.span-\d+-(?:\d+|end))?\.h5")
    for path in stale:
        log.info("removing %s, left by a run that was killed", path)
        path.unlink(missing_ok=True)


def reuse_finished(refs: list[VideoRef], seg_table, journal: Journal, run: str, retry_failed: bool = False
                   ) -> tuple[dict[int, JournalledVideo], list, dict[int, str], dict[int, int]]:
    """Results an earlier run journalled with the same fingerprint (``run``: this run's run_record),
    the jobs left to do (largest file first), each video's fingerprint, and how often each job
    crashed or stalled a worker before. Reused rows get the file's current path (it may have moved:
    same relative path, size and mtime); journalled videos that other settings made are told."""
    run_key = _sha256(run)
    other_runs: list[str] = []  # the run records of journalled videos computed again for other settings
    results: dict[int, JournalledVideo] = {}
    fingerprints: dict[int, str] = {}
    strikes: dict[int, int] = {}
    sizes: dict[int, int] = {}
    jobs = []
    for pos, ref in enumerate(refs):
        segs = segments_for(ref, seg_table)
        try:
            st = ref.path.stat()
            size, mtime = st.st_size, st.st_mtime
        except OSError:
            size, mtime = -1, 0.0
        fingerprints[pos] = video_fingerprint(run_key, ref, segs, size, mtime)
        done = journal.read(ref.video_id, arrays=False)
        if done is not None and done[1] == fingerprints[pos] and not worth_retrying(done[0], retry_failed):
            done[0].video["source_path"] = str(ref.path)
            results[pos] = journalled(done[0], journal)
        else:
            strikes[pos] = done[0].strikes if done is not None and done[1] == fingerprints[pos] else 0
            if done is not None and done[0].run != run:
                other_runs.append(done[0].run)
            jobs.append((pos, ref, segs))
            sizes[pos] = size
    if results:
        log.info("resuming: %d of %d videos already done", len(results), len(refs))
    warn_recomputed(other_runs, run, journal)
    kept = sum(not VideoStatus(r.video["status"]).clean for r in results.values())
    if kept:
        log.warning("%d video(s) with problems kept from an earlier run (unchanged files whose own bytes "
                    "fail, or that crashed or stalled a worker %d times); --retry-failed processes them again",
                    kept, MAX_STRIKES)
    return results, largest_first(jobs, sizes), fingerprints, strikes


def resume_parts(jobs: list, journal: Journal, fingerprints: dict[int, str]
                 ) -> tuple[Resumed, dict[int, list[tuple[dict, dict[str, Any]]]]]:
    """Long recordings an earlier run left part-way (journalled spans with the same fingerprint):
    the records of their finished parts and the spans still to decode (for the workers), and
    those parts' clips with their vectors (for the video's result)."""
    resumed: Resumed = {}
    preloaded: dict[int, list[tuple[dict, dict[str, Any]]]] = {}
    for pos, ref, _ in jobs:
        parts = journal.read_spans(ref.video_id, fingerprints[pos])
        if not parts:
            continue
        # (the file may have moved since, like a reused video's: same relative path, size and mtime)
        records = [VideoDone(pos, **dict(known(p.record), video=dict(p.record["video"], source_path=str(ref.path)),
                                         span=tuple(p.record["span"])))
                   for p in parts]
        resumed[pos] = (records, spans_left([r.span for r in records]))
        preloaded[pos] = [(row, {**{k: v[i] for k, v in p.embeddings.items()},
                                 **{t: v[i] for t, v in p.predictions.items()}})
                          for p in parts for i, row in enumerate(p.clips)]
    if resumed:
        minutes = sum(part_seconds(r) for records, _ in resumed.values() for r in records) / 60
        log.info("resuming %d recording(s) part-way: %.0f min of recording already done", len(resumed), minutes)
    return resumed, preloaded


def part_seconds(done: VideoDone) -> float:
    """Seconds of recording a finished part covers; one that ran to the end (a shared recording's
    last part may finish before the others) covers up to where its decoding ended."""
    first, end = done.span
    stop = end * SPAN_SECONDS if end is not None else (done.video.get("decoded_duration_s") or 0.0)
    return max(0.0, stop - first * SPAN_SECONDS)


def known(record: dict[str, Any]) -> dict[str, Any]:
    """A journalled part's record without the fields this version's VideoDone no longer has (an
    earlier version's ``clip_range``): a job requeued after an upgrade still resumes."""
    names = {f.name for f in fields(VideoDone)}
    return {k: v for k, v in record.items() if k in names}


def span_record(done: VideoDone) -> dict[str, Any]:
    """A finished part's record as the journal keeps it (resume_parts reads it back)."""
    record = asdict(done)
    del record["video_pos"]
    return record


def warn_recomputed(other_runs: list[str], run: str, journal: Journal) -> None:
    """One warning when journalled videos are computed again because the settings or weights differ
    from the run that made them: a typo in a job script must not throw hours away unseen."""
    if not other_runs:
        return
    changes: list[str] = []
    for old in dict.fromkeys(other_runs):
        changes += [c for c in run_changes(old, run) if c not in changes]
    log.warning("%d video(s) finished by an earlier run will be computed again: it used other settings or "
                "weights (%s); their journal parts in %s will be replaced", len(other_runs),
                "; ".join(changes[:4]) + ("; ..." if len(changes) > 4 else ""), journal.dir)


def largest_first(jobs: list, sizes: dict[int, int]) -> list:
    """``jobs`` (pos, ref, segments), largest file first (``sizes`` by pos, -1: unreadable): a long
    recording started last would finish alone while the other workers idle (longest-first
    scheduling, the size standing for the duration); a file that cannot be read comes first
    and fails fast. Results keep the input's order (they are placed by pos)."""
    return sorted(jobs, key=lambda job: (sizes[job[0]] >= 0, -sizes[job[0]]))  # (stable: ties keep their order)


def journalled(res: VideoResult, journal: Journal) -> JournalledVideo:
    """What the run keeps of a journalled video until the end (its clips and arrays are read back then)."""
    return JournalledVideo(video=res.video, errors=res.errors, n_clips=len(res.clips),
                           part=journal.part_path(res.video["video_id"]))


def folder_row(path: str, cause: str) -> dict[str, Any]:
    """The errors-table row of an input folder that could not be listed (no video of its own: the
    videos in it are missing from the run, which the row says where the data are read)."""
    return {"video_id": "", "path": path, "stage": "walk",
            "message": f"folder could not be read ({cause}): the videos in it are not included"}


def write_output(ordered: list[JournalledVideo], output: Path, net, predictors: list, settings: dict[str, Any],
                 shard: tuple[int, int] | None, inputs: dict[str, Any], command_line: str | None,
                 started: str, run_errors: list[dict[str, Any]] = ()) -> None:
    """Assemble the journalled videos, in input order, into the output file with its provenance
    (``inputs``: inputs_record, which merge compares between shards; ``run_errors``: rows of no
    video, folder_row)."""
    info = net.info
    attrs = {"socialfeat_version": __version__, "model_name": info.name, "model_class": info.model_class,
             "weights_sha256": info.sha256 or "", "weights_source": info.source or "",
             "model_config": info.to_dict(), "preprocess": info.preprocess.to_dict(), "settings": settings,
             "shard": f"{shard[0]}/{shard[1]}" if shard else "", "inputs": inputs,
             "command_line": command_line or " ".join(sys.argv), "started_at": started,
             "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    assemble_output(ordered, output, attrs, embedding_dim=net.norm.normalized_shape[0],
                    prediction_labels={p.name: p.meta() for p in predictors}, run_errors=list(run_errors))


def summarise(ordered: list[JournalledVideo], output: Path, n_reused: int, n_resumed: int = 0,
              n_unreadable_folders: int = 0) -> ExtractSummary:
    statuses: dict[str, int] = {}
    for r in ordered:
        statuses[r.video["status"]] = statuses.get(r.video["status"], 0) + 1
    n_failed = sum(v for k, v in statuses.items() if not VideoStatus(k).clean)
    return ExtractSummary(output=output, n_videos=len(ordered), n_clips=sum(r.n_clips for r in ordered),
                          n_failed=n_failed, n_reused=n_reused, statuses=statuses, n_resumed=n_resumed,
                          n_unreadable_folders=n_unreadable_folders)


class _Recorder:
    """Writes each finished video to the journal (the durable path shared by all engines).

    The writes (an HDF5 file and an fsync each) happen on a thread of their own, in order, so
    that the loop feeding the model does not wait on the disk; use as a context manager: on
    leaving, every write handed over is finished (also on Ctrl-C), and a failed write raises.
    """

    def __init__(self, journal: Journal, fingerprints: dict[int, str], results: dict[int, JournalledVideo],
                 strikes: dict[int, int], run: str, bar):
        self.journal, self.fingerprints, self.results, self.bar = journal, fingerprints, results, bar
        self.strikes, self.run = strikes, run
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="socialfeat-journal")
        self.writes: list[Future] = []

    def part(self, pos: int, done: VideoDone, res: VideoResult) -> None:
        """A finished part of a long recording whose other parts are still decoding."""
        self._raise_failed()
        span = SpanResult(span_record(done), res.clips, res.embeddings, res.predictions)
        self.writes.append(self.writer.submit(self.journal.write_span, done.video["video_id"], span,
                                              self.fingerprints[pos]))

    def __call__(self, pos: int, res: VideoResult) -> None:
        prior = self.strikes.get(pos, 0)
        res.strikes = prior + 1 if res.failure in (Failure.CRASH, Failure.TIMEOUT) else 0
        res.run = self.run
        self.results[pos] = journalled(res, self.journal)  # the arrays go with the write, not kept
        for e in res.errors:
            log.warning("%s: %s: %s", one_line(e["path"]), e["stage"], one_line(e["message"]))
        self._raise_failed()
        self.writes.append(self.writer.submit(self._write, res, self.fingerprints[pos]))

    def _write(self, res: VideoResult, fingerprint: str) -> None:
        self.journal.write(res, fingerprint)
        self.bar.update(1)

    def _raise_failed(self) -> None:
        """A write that failed (a full disk) stops the run at once; the finished ones are kept."""
        pending = []
        for write in self.writes:
            if write.done():
                write.result()
            else:
                pending.append(write)
        self.writes = pending

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.writer.shutdown(wait=True)
        if exc[0] is None:
            self._raise_failed()


def decoded_items(jobs, spec, plan: PlanSettings, workers: int, video_timeout: float | None,
                  resumed: Resumed | None = None):
    """ClipItem, PartDone and VideoDone records of ``jobs``: from isolated worker processes, or
    (``workers=0``) here. Clips come as views of the workers' shared slots: the encoder copies them at
    once, to the GPU or into tensors it reuses on the CPU (BatchEncoder._take); no descriptor per tensor
    crosses processes. ``resumed``: see resume_parts."""
    if workers:
        return WorkerPool(jobs, spec, plan, workers, video_timeout, lend_tensors=True, resumed=resumed).start()
    return in_process_items(jobs, spec, plan, resumed)


def _run_jobs(jobs, net, dev, spec, plan, batch_size, workers, progress, record_kw, tasks, video_timeout,
              compile_model=False, resumed=({}, {})):
    parts, preloaded = resumed
    items = decoded_items(jobs, spec, plan, workers, video_timeout, parts)  # decoding before the model is set up
    with contextlib.closing(items):  # (the workers are stopped if the set-up below fails)
        net.to(dev)  # the weights are read from the checkpoint's memory map now, while the workers decode
        if dev.type == "cpu":
            prepare_models([net], plan.precision)  # int8 packs its layers from the map (no copy of them first)
            own_memory(net)
        for task in tasks:
            task.to(dev)
        encoder = BatchEncoder(net, dev, batch_size, tasks, plan.precision, plan.embeddings, compile=compile_model)
        bar_v = tqdm(total=len(jobs), unit="video", desc="videos", disable=not progress, file=sys.stderr)
        bar_c = tqdm(unit="clip", desc="clips ", disable=not progress, file=sys.stderr, position=1)
        with _Recorder(bar=bar_v, **record_kw) as record:  # journal writes off the model's path
            _encode_all(items, encoder, record, [t.name for t in tasks], bar_c, preloaded)
    bar_c.close()
    bar_v.close()


def _encode_all(items, encoder: BatchEncoder, record: _Recorder, task_names: list[str], bar_c,
                preloaded: dict[int, list] | None = None) -> None:
    """Clips into the encoder as they come; each video to the journal once its record and all its clips
    are back, and each finished part of a long recording (PartDone) once all of its clips are back."""
    encoded: dict[int, list] = {pos: list(clips) for pos, clips in (preloaded or {}).items()}  # per video:
    # (clip row, vectors) back from the encoder (or from the parts an earlier run journalled)
    finished: dict[int, VideoDone] = {}
    open_clips: dict[int, int] = {}  # clips handed to the encoder but not yet back, per video
    waiting: dict[int, list[list]] = {}  # per video: [part record, its clips back so far] not yet journalled

    def write(pos: int) -> None:
        waiting.pop(pos, None)  # (the whole video is journalled instead)
        record(pos, video_result(finished.pop(pos), encoded.pop(pos, []), task_names))

    def write_parts(pos: int) -> None:
        for entry in [e for e in waiting.get(pos, []) if e[1] >= e[0].n_clips]:
            done = entry[0]
            waiting[pos].remove(entry)
            clips = [c for c in encoded.get(pos, []) if done.holds(c[0])]
            record.part(pos, done, video_result(done, clips, task_names))

    def collect(done_items) -> None:
        for item, vecs in done_items:
            encoded.setdefault(item.video_pos, []).append((item.clip, vecs))
            open_clips[item.video_pos] -= 1
            for entry in waiting.get(item.video_pos, []):
                entry[1] += entry[0].holds(item.clip)
        bar_c.update(len(done_items))
        for pos in [p for p in waiting if waiting[p]]:
            write_parts(pos)
        for pos in [p for p in finished if open_clips.get(p, 0) == 0]:
            write(pos)

    for item in items:
        if isinstance(item, ClipItem):
            open_clips[item.video_pos] = open_clips.get(item.video_pos, 0) + 1
            collect(encoder.add(item))
        elif isinstance(item, PartDone):
            done = item.done
            failed = done.video["status"] == VideoStatus.ERROR or done.failure in (Failure.TRANSIENT, Failure.CRASH,
                                                                                    Failure.TIMEOUT)
            if not failed:  # (a failed part makes its video an error, which a later run decodes again whole)
                back = sum(done.holds(row) for row, _ in encoded.get(item.video_pos, []))
                waiting.setdefault(item.video_pos, []).append([done, back])
                write_parts(item.video_pos)
        else:
            finished[item.video_pos] = item
            if open_clips.get(item.video_pos, 0) == 0:
                write(item.video_pos)
    collect(encoder.flush())
    for pos in list(finished):
        write(pos)
