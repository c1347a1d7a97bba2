"""Decoding worker processes that one bad video cannot stop, hang or starve.

Each worker is a process with pipes of its own (videos in, clips out), and takes
the next video as soon as it is done with one, whatever the others do. A worker
that dies (killed by the kernel for lack of memory, a crash inside a decoder)
takes nothing else with it: the video it was decoding becomes an error row, a
fresh worker takes its place, and the run goes on. Each video is also timed: one
whose worker delivers nothing for longer than its limit (a stalled network file
system, a pathological file) has its worker killed and is recorded as a timeout.
When no video is left to hand out and a worker idles, a worker busy with a long
recording is asked to share it: before its next clip it keeps the span it is in
and half of those after it, and the rest becomes a part for the idle worker
(spans of pipeline.SPAN_SECONDS);
the parts' records are merged into the video's one (pipeline.merge_parts). A long recording
is also decoded in parts of pipeline.CHECKPOINT_SPANS spans, each passed on as a PartDone when
it is finished (and journalled), so that an interrupted run resumes from its last finished part.
A clip's tensors travel through slots of a shared region mapped before the
workers start (``handover.py``); only a small record goes through the pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Iterator

import torch
import torch.multiprocessing as tmp

from socialfeat.errors import SocialfeatError
from socialfeat.handover import SharedSlots, in_slot, pack, slot_bytes, unpack
from socialfeat.media import use_decoder_threads
from socialfeat.pipeline import (
    CHECKPOINT_SPANS,
    RAW_FRAMES_MAX_PIXELS,
    SPAN_SECONDS,
    ClipItem,
    PartCut,
    PartDone,
    PlanSettings,
    VideoDone,
    VideoStarted,
    closing_items,
    error_row,
    guarded_video_items,
    span_of,
    video_row,
)
from socialfeat.preprocess import PreprocessSpec
from socialfeat.store import Failure, VideoStatus

log = logging.getLogger(__name__)

# A video may go this long without its worker delivering anything (a clip, or the
# container's facts) before it is stopped: a fixed allowance plus time to decode the
# whole recording twice over, at least at real-time speed, between two clips.
TIMEOUT_BASE_S = 120.0
TIMEOUT_PER_RECORDED_S = 2.0
TIMEOUT_DURATION_CAP_S = 48 * 3600.0  # a header may claim years: no limit follows it there
PREFETCH = 4  # items a worker may have on their way to the model's process
VIDEOS_AHEAD = 2  # videos handed to a worker at once: it starts the next without waiting
MAX_UNEXPLAINED_DEATHS = 3  # workers dying before they take up any video: something else is wrong

Job = tuple[int, Any, Any]  # (position, VideoRef, segments)
# per video position: records of the parts an earlier run finished, and the spans still to decode
Resumed = dict[int, tuple[list[VideoDone], list[tuple[int, int | None]]]]


class WorkerError(SocialfeatError, RuntimeError):
    """Decoding workers that cannot be started or keep dying before they take up a video."""


@dataclass
class _Part:
    """What a worker is handed: job ``index``, spans [first, end) of it (end None: to the video's end)."""
    index: int
    first: int = 0
    end: int | None = None


@dataclass(frozen=True)
class CutRequest:
    """Parent to worker: share the part (index, first) you are decoding (see VideoRun.offer_cut)."""
    index: int
    first: int


def stall_limit(duration: float | None, fixed: float | None = None) -> float:
    """Seconds a video's worker may go without delivering anything (``fixed`` overrides)."""
    if fixed is not None:
        return fixed
    return TIMEOUT_BASE_S + TIMEOUT_PER_RECORDED_S * min(duration or 0.0, TIMEOUT_DURATION_CAP_S)


def in_process_items(jobs: list[Job], spec: PreprocessSpec, plan: PlanSettings, resumed: Resumed | None = None
                     ) -> Iterator[ClipItem | PartDone | VideoDone]:
    """The videos decoded in this process (``--workers 0``): no isolation, no time limit. Long
    recordings in parts of CHECKPOINT_SPANS spans, one after the other (see WorkerPool)."""
    for pos, ref, segs in jobs:
        records, todo = resumed.get(pos, ([], [(0, None)])) if resumed else ([], [(0, None)])
        records, todo = list(records), deque(todo)
        while todo:
            first, end = todo.popleft()
            for item in guarded_video_items(pos, ref, spec, plan, segs, (first, end), checkpoint_spans=CHECKPOINT_SPANS):
                if isinstance(item, PartCut):  # the rest of this part is the next one
                    todo.appendleft((item.at, end))
                elif isinstance(item, VideoDone):
                    records.append(item)
                    if todo:
                        yield PartDone(pos, item)
                elif not isinstance(item, VideoStarted):
                    yield item
        yield from closing_items(records, spec.sample_rate)


# ---------------------------------------------------------------- worker side
def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(all_jobs: list[Job], jobs, out, credits, spec: PreprocessSpec, plan: PlanSettings,
           decoder_threads: int, parent: int, slots: SharedSlots | None, owner: int) -> None:
    """A worker's life: take a video or part of one ((index in ``all_jobs``, first span, end span):
    a few bytes through the pipe, which never fills), send its clips and its record, take the
    next. Message ``n`` uses slot ``n % PREFETCH``: its credit means the message PREFETCH before
    it has been taken. Requests to share the current part are read before each of its clips."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle, and so is the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SIGTERM a cluster sends every process of a job
    torch.set_num_threads(1)
    use_decoder_threads(decoder_threads)
    sent = 0

    def send(item) -> None:
        nonlocal sent
        while not credits.acquire(timeout=5.0):  # the model's process has enough on its plate
            if os.getppid() != parent:
                os._exit(0)
        if slots is not None and isinstance(item, ClipItem):
            item = pack(item, slots, slots.slot_offset(owner, sent))
        out.send(item)
        sent += 1

    inbox: deque = deque()  # parts (or the end, None) read from the pipe, not yet begun
    asked: set[tuple[int, int]] = set()  # cut requests received: (index, first) of the part

    def take(message) -> None:
        if isinstance(message, CutRequest):
            asked.add((message.index, message.first))
        else:
            inbox.append(message)

    while True:
        while not inbox:
            if jobs.poll(5.0):
                take(jobs.recv())
            elif os.getppid() != parent:
                return
        part = inbox.popleft()
        if part is None:
            return
        index, first, end = part
        asked.clear()  # requests for parts that are finished

        def cut_requested(key=(index, first)) -> bool:
            while jobs.poll():
                take(jobs.recv())
            if key in asked:
                asked.discard(key)
                return True
            return False

        pos, ref, segs = all_jobs[index]
        send(VideoStarted(pos))
        # (with slots, decoded frames go straight into them: see model_inputs.FrameList)
        for item in guarded_video_items(pos, ref, spec, plan, segs, (first, end), cut_requested,
                                        stack_frames=slots is None, checkpoint_spans=CHECKPOINT_SPANS):
            send(item)


# ---------------------------------------------------------------- parent side
@dataclass(eq=False)
class _Worker:
    owner: int  # its place in the pool: which shared slots it writes
    proc: Any
    jobs: Any  # Connection: videos to the worker
    out: Any  # Connection: items from the worker
    credits: Any  # Semaphore: items the worker may still send
    videos: deque = field(default_factory=deque)  # _Parts handed over, in order; videos[0] is being decoded
    started: bool = False  # the worker has taken up videos[0]
    duration: float = 0.0  # of videos[0]'s video, once read
    splittable: bool = False  # videos[0] may be shared (VideoStarted.splittable)
    progress_s: float = 0.0  # start of the last clip received from videos[0]
    cut_asked: bool = False  # a CutRequest for videos[0] is unanswered
    limit: float = TIMEOUT_BASE_S
    last_heard: float = 0.0
    broken: bool = False  # a video could not be handed over: it died (found out by _collect)


def _death_cause(exitcode: int | None) -> str:
    if exitcode is None or exitcode >= 0:
        return f"exited with status {exitcode}" if exitcode else "stopped"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


class WorkerPool:
    """Decodes ``jobs`` in ``n_workers`` processes; iterating yields ClipItem and VideoDone
    records in the order they arrive (every video ends with exactly one VideoDone).

    ``lend_tensors``: clips' tensors travel through shared slots (handover.py) and come out as
    views of them, which their worker writes again once the next item is asked for: for a
    consumer that copies them at once anyway (BatchEncoder.add: to the GPU, or on the CPU into
    tensors it reuses). Otherwise each
    tensor travels in shared memory of its own, which the consumer may keep.

    A video decoded in several parts also yields a PartDone for each part but its last.
    ``resumed``: videos an earlier run left part-way (their finished parts' records, merged with
    the new ones, and the spans still to decode)."""

    def __init__(self, jobs: list[Job], spec: PreprocessSpec, plan: PlanSettings, n_workers: int,
                 video_timeout: float | None = None, lend_tensors: bool = False, resumed: Resumed | None = None):
        self.jobs = jobs
        self.pending: deque[_Part] = deque()  # handed out in order
        self.open_parts: dict[int, int] = {}  # per job: parts handed out or pending, not done
        self.part_records: dict[int, list[VideoDone]] = {}  # per job: records of its finished parts
        for i, (pos, _, _) in enumerate(jobs):
            records, todo = (resumed or {}).get(pos, ([], [(0, None)]))
            if records:
                self.part_records[i] = list(records)
            self.pending.extend(_Part(i, first, end) for first, end in todo)
            self.open_parts[i] = len(todo)
        self.spec, self.plan, self.timeout = spec, plan, video_timeout
        # (more workers than videos: a long recording is shared among them)
        self.n_workers = max(1, n_workers)
        # fork: the workers inherit the shared slots (and need no pickled copy of the jobs)
        fork = sys.platform == "linux"
        self.ctx = tmp.get_context("fork" if fork else None)
        self.slots = SharedSlots(self.n_workers, PREFETCH, slot_bytes(spec, RAW_FRAMES_MAX_PIXELS)) \
            if lend_tensors and fork and jobs else None
        self.decoder_threads = 1  # the same frames whatever the number of workers (media._decoder_threads)
        self.unexplained_deaths = 0
        self.workers: list[_Worker] | None = None

    def start(self) -> WorkerPool:
        """Fork the workers and hand them their first videos now (iterating does it otherwise):
        before the model's process holds a GPU context and the model's memory, forking is cheaper,
        and decoding overlaps the set-up (each worker fills its PREFETCH slots meanwhile)."""
        if self.workers is None:
            self.workers = [self._start(owner) for owner in range(self.n_workers)] if self.pending else []
            self._hand_out_all(self.workers)
        return self

    def close(self) -> None:
        """Stop the workers (a run that ends before iterating, e.g. the model failed to load)."""
        for w in self.workers or []:
            self._stop(w)

    def __iter__(self) -> Iterator[ClipItem | PartDone | VideoDone]:
        workers = self.start().workers
        for index in [i for i, n in self.open_parts.items() if n == 0]:  # every part finished before
            self.open_parts[index] = 1
            yield from self._part_done(index, self.part_records[index].pop())
        try:
            while self.pending or any(w.videos for w in workers):
                self._hand_out_all(workers)
                self._share_work(workers)
                yield from self._collect(workers)
        except BaseException:  # an error in the model's process, Ctrl-C: stop at once
            for w in workers:
                self._stop(w)
            raise
        self._shut_down(workers)

    # ------------------------------------------------------------ workers
    def _start(self, owner: int) -> _Worker:
        jobs_r, jobs_w = self.ctx.Pipe(duplex=False)
        out_r, out_w = self.ctx.Pipe(duplex=False)
        credits = self.ctx.Semaphore(PREFETCH)
        proc = self.ctx.Process(target=_serve, daemon=True, name="socialfeat-decoder",
                                args=(self.jobs, jobs_r, out_w, credits, self.spec, self.plan,
                                      self.decoder_threads, os.getpid(), self.slots, owner))
        proc.start()
        jobs_r.close()  # the worker's ends: its death then reads as the end of its pipe
        out_w.close()
        return _Worker(owner, proc, jobs_w, out_r, credits, last_heard=time.monotonic())

    def _hand_out_all(self, workers: list[_Worker]) -> None:
        """Top every worker up to VIDEOS_AHEAD parts, one each first: no worker waits while another has two."""
        for depth in range(1, VIDEOS_AHEAD + 1):
            for w in workers:
                self._hand_out(w, depth)

    def _hand_out(self, w: _Worker, depth: int = VIDEOS_AHEAD) -> None:
        """Give ``w`` parts until it holds ``depth``."""
        if not w.videos:
            w.last_heard, w.limit = time.monotonic(), stall_limit(None, self.timeout)
        while self.pending and len(w.videos) < depth and not w.broken:
            part = self.pending[0]
            try:
                w.jobs.send((part.index, part.first, part.end))
            except OSError:  # its end of the pipe is closed: the worker is gone
                w.broken = True
                return
            w.videos.append(self.pending.popleft())

    def _share_work(self, workers: list[_Worker]) -> None:
        """Nothing left to hand out and workers idle: ask the workers with the most of a long
        recording still ahead of them to share it (one request per idle worker)."""
        if self.pending:
            return
        wanted = sum(not w.videos and not w.broken for w in workers) - sum(w.cut_asked for w in workers)
        if wanted <= 0:
            return
        ahead = sorted(((self._spans_ahead(w), i) for i, w in enumerate(workers)), reverse=True)
        for spans, i in ahead[:wanted]:
            if spans < 2:  # (the worker keeps the span it is in and half of the others)
                break
            w = workers[i]
            part = w.videos[0]
            try:
                w.jobs.send(CutRequest(part.index, part.first))
            except OSError:
                w.broken = True
                continue
            w.cut_asked = True

    @staticmethod
    def _spans_ahead(w: _Worker) -> int:
        """Spans of the SPAN_SECONDS grid left in the part a worker decodes (0: not to be shared)."""
        if not (w.started and w.splittable and not w.cut_asked and len(w.videos) == 1 and not w.broken):
            return 0
        part = w.videos[0]
        end = part.end if part.end is not None else span_of(max(0.0, w.duration - 1e-6)) + 1
        return end - max(part.first, span_of(w.progress_s))

    def _part_done(self, index: int, done: VideoDone) -> list[VideoDone | PartDone]:
        """The part's record while other parts are open; once the last is done, what closes the
        video (pipeline.closing_items)."""
        self.part_records.setdefault(index, []).append(done)
        self.open_parts[index] -= 1
        if self.open_parts[index]:
            return [PartDone(done.video_pos, done)]
        return closing_items(self.part_records.pop(index), self.spec.sample_rate)

    def _shut_down(self, workers: list[_Worker]) -> None:
        for w in workers:
            with contextlib.suppress(OSError, ValueError):
                w.jobs.send(None)
        deadline = time.monotonic() + 5.0
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            self._stop(w)

    @staticmethod
    def _stop(w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        for conn in (w.jobs, w.out):
            conn.close()

    # ------------------------------------------------------------ the loop
    def _collect(self, workers: list[_Worker]) -> Iterator[ClipItem | VideoDone]:
        """Wait for the busy workers; pass on what they send; replace any that died or stalled."""
        busy = [w for w in workers if w.videos or w.broken]
        if not busy:
            return
        now = time.monotonic()
        timeout = min(max(0.0, w.last_heard + w.limit - now) for w in busy)
        ready = set(wait([w.out for w in busy] + [w.proc.sentinel for w in busy], timeout=min(timeout, 1.0)))
        for w in busy:
            dead = False
            if w.out in ready or w.proc.sentinel in ready:
                try:
                    for _ in range(PREFETCH + 2):  # what it has sent so far; then the others' turn
                        if not w.out.poll():
                            break
                        items, lent = self._received(w, w.out.recv())
                        yield from items
                        if lent:  # its tensors were views of its slot, taken by now:
                            w.credits.release()  # the worker may write the slot again
                except (EOFError, OSError):  # the end of its pipe: the worker is gone
                    dead = True
                except Exception as e:  # a message that cannot be read back: the worker is lost too
                    log.debug("unreadable message from a decoding worker: %s", e)
                    dead = True
                dead = dead or (w.proc.sentinel in ready and not w.proc.is_alive() and not w.out.poll())
            if dead:
                w.proc.join()
                cause = _death_cause(w.proc.exitcode)
                yield from self._replace(w, workers, Failure.CRASH, f"the decoding worker was {cause} "
                                         "while decoding this video")
            elif not w.out.poll() and time.monotonic() - w.last_heard > w.limit:  # (a worker waiting on
                # the model's process always has something in its pipe)
                yield from self._replace(w, workers, Failure.TIMEOUT, f"no progress for {w.limit:.0f} s (stalled "
                                         "decoding: a network file system or a pathological file); stopped")

    def _received(self, w: _Worker, item) -> tuple[list[ClipItem | PartDone | VideoDone], bool]:
        """Book-keeping for one message: the items to pass on, and whether the message is lent (a
        clip whose tensors are views of its slot: its credit goes back, in _collect, once the
        consumer has taken it, that is, when the next item is asked for)."""
        w.last_heard = time.monotonic()
        if isinstance(item, ClipItem):
            w.progress_s = item.clip["start_s"]
            if self.slots is not None and in_slot(item):
                return [unpack(item, self.slots)], True
        w.credits.release()
        if isinstance(item, VideoStarted):
            w.started = True
            if item.duration is not None:
                w.limit = stall_limit(item.duration, self.timeout)
                w.duration, w.splittable = item.duration, item.splittable
            return [], False
        if isinstance(item, PartCut):  # the rest of its part is for another worker
            part = w.videos[0]
            log.debug("%s: spans %d-%s go to another worker", self.jobs[part.index][1].relpath, item.at,
                      "end" if part.end is None else part.end - 1)
            self.pending.appendleft(_Part(part.index, item.at, part.end))
            self.open_parts[part.index] += 1
            part.end, w.cut_asked = item.at, False
            return [], False
        if isinstance(item, VideoDone):
            part = w.videos.popleft()
            w.started, w.limit = False, stall_limit(None, self.timeout)
            w.splittable, w.cut_asked, w.progress_s = False, False, 0.0
            return self._part_done(part.index, item), False
        return [item], False

    def _replace(self, w: _Worker, workers: list[_Worker], failure: Failure, message: str
                 ) -> Iterator[VideoDone | PartDone]:
        """Stop ``w``, record its video as failed (when it had taken it up), start a fresh worker."""
        self._stop(w)
        head = w.videos.popleft() if w.videos else None
        for part in reversed(w.videos):  # parts it had not begun go back to the queue, in order
            self.pending.appendleft(part)
        blamed = head is not None and (w.started or failure is not Failure.CRASH)
        if head is not None and not blamed:  # died before taking the video up: not the video's fault
            self.pending.appendleft(head)
            self.unexplained_deaths += 1
            if self.unexplained_deaths > MAX_UNEXPLAINED_DEATHS:
                raise WorkerError(f"decoding workers keep dying before they start a video ({message})")
        index = next(i for i, x in enumerate(workers) if x is w)
        if self.pending:
            workers[index] = self._start(w.owner)
        else:
            del workers[index]
        if not blamed:
            return
        pos, ref, _ = self.jobs[head.index]
        stage = "worker" if failure is Failure.CRASH else "timeout"
        if head.first or head.end is not None:
            message += f" (the part from {head.first * SPAN_SECONDS:g} s)"
        log.debug("%s: %s: %s", ref.path, stage, message)
        video = video_row(ref, VideoStatus.ERROR, f"{stage}: {message}")
        yield from self._part_done(head.index, VideoDone(pos, video, [error_row(ref, stage, message)], 0, failure,
                                                         (head.first, head.end)))
