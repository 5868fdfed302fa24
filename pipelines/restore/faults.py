"""What the restore job does when work is lost rather than failed: a worker killed (out of host memory,
a segfault in a decoder, a preempted node), a task that never returns, a signal to stop.

Ray's defaults suit none of these: Ray Data retries a dead actor's task without bound and fails the
whole dataset on the first actor that dies while starting; a stuck assembly task waits for ever. Here
dead actors are replaced while every retry of a unit of work is bounded, and work that is still lost
after its retries becomes a failed ledger row with a reason, so the rest of the archive goes on and the run ends with its summary.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import av
import ray

T = TypeVar("T")

# A scenes or assembly task whose worker died is run again at most this many times.
TASK_RETRIES = 2
# Restore actors that die while loading the model, in a row, before the restore stage gives up (a
# broken model or node fails its videos instead of being retried for ever).
ACTOR_START_DEATHS = 3

# An assembly task (decode the segments, encode the output, mux the source's streams) gets this long
# before it is cancelled and its video recorded as failed: a fixed part for the probe and the writes,
# and a part per frame generous for a 4K x264 encode on one CPU.
ASSEMBLY_BASE_SECONDS = 600.0
ASSEMBLY_SECONDS_PER_FRAME = 2.0

# The stages that read a source get time limits from what they read (a header read or a decode that
# hangs on a damaged file or a stalled store must not hold a worker for ever): a fixed part, and a
# part per frame (or per MB) far above the worst normal rate (4K, a slow bucket).
READ_BASE_SECONDS = 120.0
READ_SECONDS_PER_MB = 0.5  # content digest and probe: 2 MB/s at the least
SCENES_SECONDS_PER_FRAME = 0.25  # PySceneDetect's decode and analysis
DECODE_SECONDS_PER_FRAME = 1.0  # a window's frames, in the restore actor

# Seconds the restore stream may go with no block moving before it stops (its videos then fail for
# the next run): above a cold autoscaler's wait for GPU nodes, a bucket weights copy and the longest
# window of the official model at 4K.
STALL_SECONDS = 6 * 3600.0
_NO_PROGRESS_VARIABLE = "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S"

ACTOR_DIED = ("lost from the stream with its restore actor (a lost or preempted node, most likely: not held "
              "against the source; see the Ray logs)")


def set_fault_options() -> None:
    """Set Ray Data's fault options for this driver.

    Restore actors keep Ray Data's own defaults, a dead actor restarted and its task retried without
    bound: in Ray 2.60 an actor whose `max_restarts` are spent keeps its slot in the pool and is never
    replaced, so a bounded budget let one poison window empty the pool and stop the stream. The bound
    is per window instead: a window whose tries killed `ACTOR_KILLS` actors fails at once on its next
    try (`window_attempts`), as a row; tries on nodes lost since are not counted, so a window goes on
    through preemptions. A window block that fails all the same is dropped from the stream
    (`max_errored_blocks`) and the driver records its video as failed (`lost_windows`), a reason of
    the run's, not held against the source.

    Ray Data's no-progress timeout is sized for what the job does: every unit of work has its own
    limit (scene detection, a window's decode, an assembly's deadline) and a dead actor is replaced,
    so "no block moved" is mostly waiting: for the autoscaler's GPU nodes (reported each minute,
    `waits.waiting_lines`), a model's load, a long window in the model. Ray's 30 minutes failed whole
    runs on those; `STALL_SECONDS` is left only for a pool where no actor can live (a broken node or
    model). Ray's own variable, RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S, overrides it.
    """
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # each block is one window or one video: none may stop the archive
    context.max_consecutive_actor_init_deaths = ACTOR_START_DEATHS
    if _NO_PROGRESS_VARIABLE not in os.environ:
        context.execution_no_progress_timeout_s = STALL_SECONDS


def lost_windows(expected: int | None, arrived: list[int]) -> str:
    """The ledger reason for a video whose windows did not all come back from the restore stage."""
    if expected is None:
        return (f"no window came back: its scenes task died {1 + TASK_RETRIES} times, or every window "
                f"was {ACTOR_DIED}")
    missing = sorted(set(range(expected)) - set(arrived))
    shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
    return f"window{'s' if len(missing) > 1 else ''} {shown} of {expected} never came back: {ACTOR_DIED}"


def assembly_deadline(frames: int) -> float:
    return ASSEMBLY_BASE_SECONDS + ASSEMBLY_SECONDS_PER_FRAME * max(frames, 0)


@dataclass
class Assemblies:
    """The assembly tasks in flight, with their deadlines (driver side)."""

    running: dict[ray.ObjectRef, tuple[dict[str, Any], float, float]] = field(default_factory=dict)

    def add(self, ref: ray.ObjectRef, video: dict[str, Any], frames: int) -> None:
        limit = assembly_deadline(frames)
        self.running[ref] = (video, time.monotonic() + limit, limit)

    def finished(self, wait: float | None) -> Iterator[tuple[dict[str, Any], dict[str, Any] | str]]:
        """(video row, its ledger row) for each task that returned, or (video row, reason) for each
        that failed or ran past its deadline (cancelled). `wait`: seconds to wait for the first one
        (None: until one finishes or a deadline passes)."""
        if not self.running:
            return
        if wait is None:
            wait = max(0.0, min(deadline for _, deadline, _ in self.running.values()) - time.monotonic())
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=wait)
        if ready:
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for ref in ready:
            video, _, _ = self.running.pop(ref)
            try:
                yield video, ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a crashed task or a storage error: recorded, the run goes on
                yield video, f"assembly: {describe(e)}"
        now = time.monotonic()
        for ref, (video, deadline, limit) in list(self.running.items()):
            if deadline <= now:
                ray.cancel(ref, force=True)
                del self.running[ref]
                yield video, f"assembly: still running after {limit:.0f} s (cancelled; the limit grows with the frames)"


class TimeLimit(Exception):
    """A stage ran past its time limit (`time_limit`)."""


@contextlib.contextmanager
def time_limit(seconds: float | Callable[[], float], what: str) -> Iterator[None]:
    """Raise TimeLimit in this thread once `seconds` have passed (SIGALRM), interrupting the Python
    loops of probing and scene detection between packets or frames. Ray runs a task on the worker's
    main thread; elsewhere (a Ray Data actor's calls, a test's thread) no signal can reach, so no limit
    is set: use `run_with_limit` there.

    A callable `seconds` is a limit that grows with the work found (frames demuxed so far): asked
    again whenever the timer fires, which is then set again for the difference while it is ahead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    allowed = seconds if callable(seconds) else lambda: seconds
    started = time.monotonic()

    def expire(_signum: int, _frame: object) -> None:
        left = allowed() - (time.monotonic() - started)
        if left <= 0:
            raise _expired(what, allowed())
        signal.setitimer(signal.ITIMER_REAL, left)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(allowed(), 1e-3))  # 0 would mean no timer
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_with_limit(seconds: float, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` under `time_limit` on the main thread (Ray tasks). Elsewhere (the calls of
    a Ray Data actor run on another thread, where no signal can reach) in a helper thread that is
    abandoned if it runs past the limit: the caller goes on to its next window, and TimeLimit says why."""
    if threading.current_thread() is threading.main_thread():
        with time_limit(seconds, what):
            return fn(*args, **kwargs)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="time-limited")
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise _expired(what, seconds) from None
    finally:
        pool.shutdown(wait=False)


def _expired(what: str, seconds: float) -> TimeLimit:
    return TimeLimit(f"{what} took longer than {seconds:.3g} s (a damaged file or a stalled store?)")


def read_limit(size_bytes: int) -> float:
    return READ_BASE_SECONDS + READ_SECONDS_PER_MB * size_bytes / 2**20


class Stopped(BaseException):
    """A signal asked the run to stop (SIGTERM: a pod evicted, a spot node reclaimed; SIGINT: Ctrl-C).
    A BaseException, like KeyboardInterrupt: the handlers that record failures let it through, so the
    videos it interrupts stay unfinished (the next run takes them up), not failed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into `Stopped` in the main thread, so that the run unwinds: its leases
    are released and its summary written with what finished. Outside the main thread (a test calling
    the job from a worker thread) signals are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# What a demuxer and the parsers around it raise on bytes they cannot make sense of: FFmpeg's errors,
# and the Python errors of PyAV, PySceneDetect and our own structure checks on what a damaged file
# holds (an index past the end, a short unpack, an overflowing size). Storage and resource failures
# (an OSError that is not FFmpeg's, a time limit, MemoryError) are none of these: they are retried.
UNREADABLE = (av.error.FFmpegError, ValueError, LookupError, ArithmeticError, struct.error, EOFError)


def unreadable(error: BaseException) -> bool:
    """Whether `error`, raised while probing a source, says the file cannot be demuxed (the same bytes
    fail the same way on every run: a permanent failure), rather than that reading it failed."""
    return isinstance(error, UNREADABLE) and not (isinstance(error, OSError) and
                                                  not isinstance(error, av.error.FFmpegError))


def describe(error: BaseException) -> str:
    """"Type: message" in one line, of the original error where Ray wrapped it."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
