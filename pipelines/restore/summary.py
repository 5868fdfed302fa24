"""Progress lines while the restore job runs and the summary at its end (printed, and written to
`_ledger/summary.json`): videos done and failed, frames, frames per second, GPU-seconds, failures."""

from __future__ import annotations

import collections
import time
from typing import Any

from pipelines.listing import SKIPPED
from pipelines.restore.rows import (DEVICE, DONE, DONE_ELSEWHERE, ERROR, FRAMES, LEASED, OUTPUT, REL, RESTORE_SECONDS,
                                    SOURCE, STATUS, WINDOWS, WINDOWS_REUSED)


class RunStats:
    """Counts of one run, fed one finished video (its ledger row) at a time."""

    def __init__(self, to_restore: int) -> None:
        self.to_restore = to_restore
        self.started = time.perf_counter()
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
                f"{self.frames / self.elapsed():.2f} frames/s")

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
        return max(time.perf_counter() - self.started, 1e-9)

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
