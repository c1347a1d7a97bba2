"""Decoding worker processes that one bad video cannot stop, hang or starve.

Each worker is a process with pipes of its own (videos in, clips out), and takes
the next video as soon as it is done with one, whatever the others do. A worker
that dies (killed by the kernel for lack of memory, a crash inside a decoder)
takes nothing else with it: the video it was decoding becomes an error row, a
fresh worker takes its place, and the run goes on. Each video is also timed: one
whose worker delivers nothing for longer than its limit (a stalled network file
system, a pathological file) has its worker killed and is recorded as a timeout.
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
from socialfeat.media import available_cores, use_decoder_threads
from socialfeat.pipeline import (
    RAW_FRAMES_MAX_PIXELS,
    ClipItem,
    PlanSettings,
    VideoDone,
    VideoStarted,
    error_row,
    guarded_video_items,
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


class WorkerError(SocialfeatError, RuntimeError):
    """Decoding workers that cannot be started or keep dying before they take up a video."""


def stall_limit(duration: float | None, fixed: float | None = None) -> float:
    """Seconds a video's worker may go without delivering anything (``fixed`` overrides)."""
    if fixed is not None:
        return fixed
    return TIMEOUT_BASE_S + TIMEOUT_PER_RECORDED_S * min(duration or 0.0, TIMEOUT_DURATION_CAP_S)


def in_process_items(jobs: list[Job], spec: PreprocessSpec, plan: PlanSettings) -> Iterator[ClipItem | VideoDone]:
    """The videos decoded in this process (``--workers 0``): no isolation, no time limit."""
    for pos, ref, segs in jobs:
        for item in guarded_video_items(pos, ref, spec, plan, segs):
            if not isinstance(item, VideoStarted):
                yield item


# ---------------------------------------------------------------- worker side
def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(all_jobs: list[Job], jobs, out, credits, spec: PreprocessSpec, plan: PlanSettings,
           decoder_threads: int, parent: int, slots: SharedSlots | None, owner: int) -> None:
    """A worker's life: take a video (its index in ``all_jobs``: a few bytes through the pipe,
    which never fills), send its clips and its record, take the next. Message ``n`` uses slot
    ``n % PREFETCH``: its credit means the message PREFETCH before it has been taken."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
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

    while True:
        while not jobs.poll(5.0):
            if os.getppid() != parent:
                return
        index = jobs.recv()
        if index is None:
            return
        pos, ref, segs = all_jobs[index]
        send(VideoStarted(pos))
        for item in guarded_video_items(pos, ref, spec, plan, segs):
            send(item)


# ---------------------------------------------------------------- parent side
@dataclass(eq=False)
class _Worker:
    owner: int  # its place in the pool: which shared slots it writes
    proc: Any
    jobs: Any  # Connection: videos to the worker
    out: Any  # Connection: items from the worker
    credits: Any  # Semaphore: items the worker may still send
    videos: deque = field(default_factory=deque)  # job indices handed over, in order; videos[0] is being decoded
    started: bool = False  # the worker has taken up videos[0]
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
    consumer that copies them at once anyway (to a GPU: BatchEncoder.add). Otherwise each
    tensor travels in shared memory of its own, which the consumer may keep."""

    def __init__(self, jobs: list[Job], spec: PreprocessSpec, plan: PlanSettings, n_workers: int,
                 video_timeout: float | None = None, lend_tensors: bool = False):
        self.jobs = jobs
        self.pending: deque[int] = deque(range(len(jobs)))  # indices into jobs, handed out in order
        self.spec, self.plan, self.timeout = spec, plan, video_timeout
        self.n_workers = max(1, min(n_workers, len(jobs)))
        # fork: the workers inherit the shared slots (and need no pickled copy of the jobs)
        fork = sys.platform == "linux"
        self.ctx = tmp.get_context("fork" if fork else None)
        self.slots = SharedSlots(self.n_workers, PREFETCH, slot_bytes(spec, RAW_FRAMES_MAX_PIXELS)) \
            if lend_tensors and fork and jobs else None
        self.decoder_threads = max(1, available_cores() // self.n_workers)
        self.unexplained_deaths = 0
        self.workers: list[_Worker] | None = None

    def start(self) -> WorkerPool:
        """Fork the workers now (iterating does it otherwise): before the model's process holds a
        GPU context and the model's memory, forking is cheaper, and decoding overlaps the set-up."""
        if self.workers is None:
            self.workers = [self._start(owner) for owner in range(self.n_workers)] if self.pending else []
        return self

    def close(self) -> None:
        """Stop the workers (a run that ends before iterating, e.g. the model failed to load)."""
        for w in self.workers or []:
            self._stop(w)

    def __iter__(self) -> Iterator[ClipItem | VideoDone]:
        workers = self.start().workers
        try:
            while self.pending or any(w.videos for w in workers):
                for w in workers:
                    self._hand_out(w)
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

    def _hand_out(self, w: _Worker) -> None:
        if not w.videos:
            w.last_heard, w.limit = time.monotonic(), stall_limit(None, self.timeout)
        while self.pending and len(w.videos) < VIDEOS_AHEAD and not w.broken:
            index = self.pending[0]
            try:
                w.jobs.send(index)
            except OSError:  # its end of the pipe is closed: the worker is gone
                w.broken = True
                return
            w.videos.append(self.pending.popleft())

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
                        item, lent = self._received(w, w.out.recv())
                        if item is not None:
                            yield item
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

    def _received(self, w: _Worker, item) -> tuple[ClipItem | VideoDone | None, bool]:
        """Book-keeping for one message: the item to pass on, if any, and whether it is lent (a
        clip whose tensors are views of its slot: its credit goes back, in _collect, once the
        consumer has taken it, that is, when the next item is asked for)."""
        w.last_heard = time.monotonic()
        if self.slots is not None and isinstance(item, ClipItem) and in_slot(item):
            return unpack(item, self.slots), True
        w.credits.release()
        if isinstance(item, VideoStarted):
            w.started = True
            if item.duration is not None:
                w.limit = stall_limit(item.duration, self.timeout)
            return None, False
        if isinstance(item, VideoDone):
            w.videos.popleft()
            w.started, w.limit = False, stall_limit(None, self.timeout)
        return item, False

    def _replace(self, w: _Worker, workers: list[_Worker], failure: Failure, message: str) -> Iterator[VideoDone]:
        """Stop ``w``, record its video as failed (when it had taken it up), start a fresh worker."""
        self._stop(w)
        head = w.videos.popleft() if w.videos else None
        for index in reversed(w.videos):  # videos it had not begun go back to the queue, in order
            self.pending.appendleft(index)
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
        pos, ref, _ = self.jobs[head]
        stage = "worker" if failure is Failure.CRASH else "timeout"
        log.debug("%s: %s: %s", ref.path, stage, message)
        video = video_row(ref, VideoStatus.ERROR, f"{stage}: {message}")
        yield VideoDone(pos, video, [error_row(ref, stage, message)], 0, failure)
