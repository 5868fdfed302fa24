"""Prometheus metrics of the restore job, through `ray.util.metrics`. Every Ray node exports them on
its metrics port (`ray start --metrics-export-port`; the KubeRay PodMonitor scrapes it) with Ray's
`ray_` prefix, and counters with a `_total` suffix:

| exported name | type | tags | recorded by | meaning |
|---|---|---|---|---|
| `ray_star_frames_restored_total` | counter | device | restore actors | frames the model restored (window frames, overlaps included) |
| `ray_star_seconds_per_frame` | histogram | device | restore actors | wall seconds per frame of each restored window (decode + model + encode) |
| `ray_star_windows_planned_total` | counter | | scenes stage | windows put in the restore queue |
| `ray_star_windows_finished_total` | counter | status | restore actors | windows out of the queue: done, reused (an earlier run's segment), failed |
| `ray_star_failures_total` | counter | stage, permanent | scenes stage, restore actors, assembly | failed videos (scenes, assemble) and windows (restore); permanent: the source itself is bad |
| `ray_star_videos_finished_total` | counter | status | driver | videos finished: done or failed |
| `ray_star_videos_queued` | gauge | | driver | videos this run has claimed and not yet finished |

Queue depth in windows: `sum(ray_star_windows_planned_total) - sum(ray_star_windows_finished_total)`.
Throughput: `sum(rate(ray_star_frames_restored_total[5m]))`. Seconds per frame, 90th percentile:
`histogram_quantile(0.9, sum by (le) (rate(ray_star_seconds_per_frame_bucket[30m])))`.

Recording is a no-op outside Ray (unit tests call the stages directly).
"""

from __future__ import annotations

import functools

import ray
from ray.util import metrics

# Seconds per frame: from a large GPU on small frames (~0.05) to the official model on a CPU (minutes).
SECONDS_PER_FRAME_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300]


@functools.cache
def _counter(name: str, description: str, tags: tuple[str, ...] = ()) -> metrics.Counter:
    return metrics.Counter(name, description=description, tag_keys=tags)


@functools.cache
def _seconds_per_frame() -> metrics.Histogram:
    return metrics.Histogram("star_seconds_per_frame", description="wall seconds per frame of a restored window",
                             boundaries=SECONDS_PER_FRAME_BUCKETS, tag_keys=("device",))


@functools.cache
def _videos_queued() -> metrics.Gauge:
    return metrics.Gauge("star_videos_queued", description="videos claimed by this run and not yet finished")


def window_restored(frames: int, seconds: float, device: str) -> None:
    if ray.is_initialized() and frames > 0:
        _counter("star_frames_restored", "frames restored by the model", ("device",)).inc(frames, {"device": device})
        _seconds_per_frame().observe(seconds / frames, {"device": device})


def windows_planned(count: int) -> None:
    if ray.is_initialized() and count > 0:
        _counter("star_windows_planned", "windows put in the restore queue").inc(count)


def window_finished(status: str) -> None:
    if ray.is_initialized():
        _counter("star_windows_finished", "windows out of the restore queue", ("status",)).inc(1, {"status": status})


def failure(stage: str, permanent: bool) -> None:
    if ray.is_initialized():
        _counter("star_failures", "failed videos and windows", ("stage", "permanent")).inc(
            1, {"stage": stage, "permanent": str(bool(permanent)).lower()})


def video_finished(status: str) -> None:
    if ray.is_initialized():
        _counter("star_videos_finished", "videos finished", ("status",)).inc(1, {"status": status})


def videos_queued(count: int) -> None:
    if ray.is_initialized():
        _videos_queued().set(count)
