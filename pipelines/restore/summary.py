"""Progress lines while the restore job runs and the summary at its end (printed, and written to
`_ledger/summary.json`): videos done and failed, frames, frames per second, GPU-seconds, failures."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from pipelines.listing import SKIPPED
from pipelines.restore.rows import (DEVICE, DONE, DONE_ELSEWHERE, ERROR, FRAMES, LEASED, OUTPUT, REL, RESTORE_SECONDS,
                                    SOURCE, STATUS, WINDOWS, WINDOWS_REUSED)

RATE_SECONDS = 300  # the time left is told at the rate of the videos finished in the last 5 minutes


class RunStats:
    """Counts of one run, fed one finished video (its ledger row) at a time."""

    def __init__(self, to_restore: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.to_restore = to_restore
        self.clock = clock
        self.started = clock()
        self.recent: collections.deque[tuple[float, int]] = collections.deque()  # (when, frames) per video
        self.frames_seen = 0  # frames of the videos finished, failed ones too: they took time as well
        self.done = self.failed = self.frames = 0
        self.windows_restored = self.windows_reused = 0
        self.restore_seconds = 0.0
        self.devices: set[str] = set()
        self.failures: list[dict[str, str]] = []
        self.held: collections.Counter[str] = collections.Counter()  # videos left to other runs, by run
        self.leased: dict[str, str] = {}  # rel -> the run that held it, of the videos left to live runs
        self.finished_elsewhere = 0  # of those, finished by them since this run read the ledger

    def add(self, video: dict[str, Any]) -> str:
        """Count a finished video (its ledger row); returns its progress line."""
        if video[STATUS] == DONE:
            self.done += 1
            self.frames += video[FRAMES]
        else:
            self.failed += 1
            self.failures.append({"source": video[SOURCE], "error": video[ERROR]})
        self.windows_reused += video[WINDOWS_REUSED]
        self.windows_restored += video[WINDOWS] - video[WINDOWS_REUSED]
        self.restore_seconds += video[RESTORE_SECONDS]
        if video[DEVICE]:
            self.devices.add(video[DEVICE])
        what = f"{video[FRAMES]} frames -> {video[OUTPUT]}" if video[STATUS] == DONE else video[ERROR]
        return (f"[{self.finished}/{self.to_restore}] {video[STATUS]:6s} {video[REL]}: {what} | "
                f"so far {self.done} done, {self.failed} failed, {self.frames} frames, "
                f"{self.frames / self.elapsed():.2f} frames/s | {self.time_left(video)}")

    def time_left(self, video: dict[str, Any]) -> str:
        """"4 videos left (about 1,200 frames), about 0:12:30 left at the last 5 minutes' rate".

        Frames left are estimated from the mean frame count of the videos finished so far (a video's
        frames are known only once it is planned, in the cluster); the rate is that of the videos
        finished in the last `RATE_SECONDS` (from the run's start until two have), so the estimate
        follows a run that speeds up (more GPUs) or slows down (longer videos).
        """
        now = self.clock()
        self.frames_seen += video[FRAMES] or 0
        self.recent.append((now, video[FRAMES] or 0))
        while len(self.recent) > 2 and now - self.recent[0][0] > RATE_SECONDS:
            self.recent.popleft()
        left = max(self.to_restore - self.finished, 0)
        if not left:
            return "nothing left"
        frames_left = round(left * self.frames_seen / (self.done + self.failed))
        if len(self.recent) > 1:  # the first video of the window marks its start; its frames came before
            rate = sum(frames for _, frames in list(self.recent)[1:]) / max(now - self.recent[0][0], 1e-9)
        else:
            rate = self.frames_seen / max(now - self.started, 1e-9)
        eta = f"about {timedelta(seconds=round(frames_left / rate))} left" if rate > 0 else "time left unknown"
        return (f"{left} videos left (about {frames_left:,} frames), {eta} at the last "
                f"{RATE_SECONDS // 60} minutes' rate")

    def skip(self, video: dict[str, Any]) -> None:
        """Count a video left to another run: it holds it (`error` names it), or finished it."""
        self.held[video[ERROR]] += 1
        self.finished_elsewhere += video[STATUS] == DONE_ELSEWHERE
        if video[STATUS] == LEASED:
            self.leased[video[REL]] = video[ERROR]

    def retake(self, rels: list[str]) -> None:
        """Count videos left to another run as this run's again (it takes them over: `skip` undone)."""
        for rel in rels:
            holder = self.leased.pop(rel)
            self.held[holder] -= 1
            if not self.held[holder]:
                del self.held[holder]

    @property
    def finished(self) -> int:
        return self.done + self.failed + sum(self.held.values())

    def describe_held(self) -> str:
        """"3 videos by run X, 1 by run Y" for the log."""
        return ", ".join(f"{n} by run {holder}" for holder, n in sorted(self.held.items()))

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-9)

    def summary(self, **fields: Any) -> dict[str, Any]:
        seconds = self.elapsed()
        on_gpu = "cuda" in self.devices
        return {
            **fields,
            "done": self.done,
            "failed": self.failed,
            "frames": self.frames,
            "seconds": round(seconds, 3),
            "frames_per_second": round(self.frames / seconds, 4),
            "windows_restored": self.windows_restored,
            "windows_reused": self.windows_reused,
            # Actor time on the model's windows: GPU-seconds when the actors held GPUs; on a
            # CPU-only cluster the same sum is CPU actor-seconds, and named so.
            "gpu_seconds": round(self.restore_seconds, 3) if on_gpu else None,
            "actor_seconds": round(self.restore_seconds, 3),
            "actor_device": "gpu" if on_gpu else ("cpu" if self.devices else None),
            "failures": self.failures,
            "skipped_leased": sum(self.held.values()),
            "leased_by": sorted(self.held),
            "finished_by_other_runs": self.finished_elsewhere,
        }


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"run {summary['run_id']}: {summary['done']} done, {summary['failed']} failed, "
        f"{summary['skipped_done']} already done, {summary['skipped_failed']} unchanged bad inputs skipped, "
        f"{summary['skipped_leased']} left to other runs (of {summary['listed']} videos under {summary['input']})",
        f"{summary['frames']} frames in {summary['seconds']:.1f} s: {summary['frames_per_second']:.2f} frames/s",
    ]
    left_out = [f"{summary[f'skipped_{kind}']} {what}" for kind, what in SKIPPED.items()
                if summary.get(f"skipped_{kind}")]
    if left_out:
        lines.insert(1, f"not listed as videos: {', '.join(left_out)}")
    if summary["actor_device"] == "gpu":
        lines.append(f"GPU-seconds: {summary['gpu_seconds']:.1f} ({summary['windows_restored']} windows restored, "
                     f"{summary['windows_reused']} reused from an earlier run)")
    elif summary["actor_device"] == "cpu":
        lines.append(f"actor-seconds on CPU (no GPU in the cluster): {summary['actor_seconds']:.1f} "
                     f"({summary['windows_restored']} windows restored, {summary['windows_reused']} reused "
                     f"from an earlier run)")
    for failure in summary["failures"]:
        lines.append(f"FAILED {failure['source']}: {failure['error']}")
    if summary.get("warning"):
        lines.append(f"WARNING: {summary['warning']}")
    lines.append(f"ledger: {summary['ledger']}")
    return "\n".join(lines)
