"""Restore a whole video archive with STAR on Ray: every video under an input URL becomes a restored
video under an output URL, with a Parquet ledger that makes reruns resume and skip finished work.

    run(ArchiveJob(input="gs://archive/raw", output="gs://archive/restored", weights="/weights"))

The pipeline (`_restore_videos`) reads top to bottom: sources -> scenes -> restore -> assemble.
"""

from __future__ import annotations

import collections
import logging
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import ray

from pipelines import storage, waits
from pipelines.actors import actor_pool, gpu_actor_resources
from pipelines.restore import ledger, metrics
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.job import TINY_WARNING, ArchiveJob, validate
from pipelines.restore.lease import Leases, describe_holders
from pipelines.restore.plan_stage import failed_row, plan_video
from pipelines.restore.restore_stage import RestoreWindows
from pipelines.restore.rows import (FINGERPRINT, OUTPUT_STEM, REL, SOURCE, STAGING, STATUS, VIDEO_ID, WINDOWS,
                                    output_stem, staging_folder, staging_root, video_id)
from pipelines.restore.summary import RunStats, format_summary
from pipelines.storage import SourceFile
from star_model.presets import get_preset
from star_model.restore import RestoreConfig

log = logging.getLogger(__name__)

GPU_ACTOR_CPUS = 2  # decode of the window and FFV1 encode of the segment run beside the model


def run(job: ArchiveJob) -> dict[str, Any]:
    """Restore what is new or changed under `job.input`; returns the run's summary (also written to
    `<output>/_ledger/summary.json`). Raises ConfigError, before Ray starts, for bad configuration."""
    # 0. Fail fast, before any GPU is asked for: arguments, weights, storage.
    config = validate(job)
    input_root, output_root = storage.canonical(job.input), storage.canonical(job.output)
    # validate() allowed no weights only for tiny (random) and nano (its shipped weights)
    random_weights = job.weights is None and get_preset(job.preset).shipped is None
    if random_weights:
        log.warning("WARNING: %s", TINY_WARNING)
    run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    started_at = ledger.now()

    # 1. Sources (driver): list the archive; drop what the ledger records as done for the same
    #    fingerprint and settings (resume and nightly runs are the same rule).
    sources = storage.list_videos(input_root)
    selection = _select(job, sources, output_root)
    # Claim the rest: a video another live run is restoring (an overlapping nightly run, a manual
    # run) is left to it. The claims last until this run ends, or its heartbeat expires if it dies.
    with Leases(output_root, run_id, timedelta(minutes=job.lease_minutes)) as leases:
        selection, held = _claim(leases, job, selection, output_root)
        header = dict(run_id=run_id, input=input_root, output=output_root, settings=job.settings(),
                      settings_key=job.settings_key(), listed=len(sources), skipped_done=len(selection.done),
                      skipped_failed=len(selection.bad), skipped_leased=len(held),
                      leased_by=sorted({holder for _, holder in held}), restored=len(selection.todo),
                      ledger=storage.join(output_root, ledger.VIDEOS), warning=TINY_WARNING if random_weights else None,
                      started_at=started_at)
        log.info("run %s: %d videos under %s, %d already done, %d unchanged bad inputs skipped, %d being "
                 "restored by other runs, %d to restore", run_id, len(sources), input_root, len(selection.done),
                 len(selection.bad), len(held), len(selection.todo))
        if held:
            log.info("left to the runs that hold them: %s", describe_holders(held))
        stats = RunStats(len(selection.todo))
        if selection.todo:
            _restore_all(job, config, selection.todo, sources, output_root, run_id, stats)
        else:
            log.info("nothing to restore: every video under %s is done, an unchanged bad input, or being "
                     "restored by another run", input_root)
        summary = stats.summary(**header, finished_at=ledger.now())
        ledger.write_summary(output_root, summary)
    log.info("%s", format_summary(summary))
    return summary


def _claim(leases: Leases, job: ArchiveJob, selection: ledger.Selection, output_root: str
           ) -> tuple[ledger.Selection, list[tuple[SourceFile, str]]]:
    """The selection less what other live runs hold, and those (source, holder run) pairs."""
    claims = leases.claim(selection.todo)
    if not claims.taken_over:
        return ledger.Selection(claims.mine, selection.done, selection.bad), claims.held
    # A run that ended since our ledger read may have finished some of them: read it again.
    again = _select(job, claims.mine, output_root)
    return ledger.Selection(again.todo, selection.done + again.done, selection.bad + again.bad), claims.held


def _restore_all(job: ArchiveJob, config: RestoreConfig, todo: Sequence[SourceFile], sources: Sequence[SourceFile],
                 output_root: str, run_id: str, stats: RunStats) -> None:
    """Restore the claimed videos, counting each finished one in `stats` (and the metrics)."""
    settings = job.settings_key()
    todo, clashing = _split_clashes(todo, sources)
    for source, reason in clashing:  # decided on the driver: no Ray needed
        log.info(stats.add(_failed_video(source, reason, output_root, run_id, settings)))
    if not todo:
        return
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init()  # local Ray, or the cluster of `ray job submit` (RAY_ADDRESS)
    try:
        metrics.videos_queued(len(todo))
        # GPU actors asked for before any GPU exists: a line every minute while the autoscaler adds one.
        gpus = job.device == "gpu" or job.accelerator_type is not None
        with waits.waiting_lines(gpu_actor_resources(job.accelerator_type) if gpus else {}, "the restore actors"):
            for video in _restore_videos(job, config, todo, output_root, run_id):
                log.info(stats.add(video))
                metrics.video_finished(video[STATUS])
                metrics.videos_queued(stats.to_restore - stats.done - stats.failed)
    finally:
        if started_ray:
            ray.shutdown()
    _remove_if_empty(staging_root(output_root))


def _select(job: ArchiveJob, sources: Sequence[SourceFile], output_root: str) -> ledger.Selection:
    latest = ledger.latest_by_rel(ledger.read_videos(output_root))
    return ledger.select(sources, latest, job.settings_key(), storage.list_videos(output_root), job.retry_failed)


def _restore_videos(job: ArchiveJob, config: RestoreConfig, sources: Sequence[SourceFile], output_root: str,
                    run_id: str) -> Iterator[dict[str, Any]]:
    """The restore pipeline, top to bottom; yields each video's ledger row as it finishes."""
    settings = job.settings_key()
    use_gpu, actors = actor_pool(job.device, job.actors, job.accelerator_type)

    # 1. Sources: one row per video, each its own block so that the scenes tasks run in parallel.
    #    out: source, rel, fingerprint, video_id, output_stem, staging
    rows = [{SOURCE: s.url, REL: s.rel, FINGERPRINT: s.fingerprint, VIDEO_ID: video_id(s.url),
             OUTPUT_STEM: output_stem(output_root, s.rel),
             STAGING: staging_folder(output_root, s.url, s.fingerprint, settings)} for s in sources]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))

    # 2. Scenes (CPU tasks, 1 CPU: probe and PySceneDetect decode one stream each): fan out a video
    #    into its windows, or into one failed row. in: a source row; out: window rows (plan_stage).
    ds = ds.flat_map(plan_video, fn_kwargs=dict(window=job.window, overlap=job.overlap, detector=job.detector),
                     num_cpus=1)
    # One window per block: a video's windows spread over the actor pool instead of one actor
    # taking the whole block.
    ds = ds.repartition(target_num_rows_per_block=1)

    # 3. Restore (actor pool, one GPU per actor; model loaded once per actor): decode the window,
    #    run STAR, write the staging segment. in: window rows; out: + status, error, segment,
    #    seconds, reused, device. batch_size must be an int when GPUs are requested.
    ds = ds.map_batches(
        RestoreWindows,
        fn_constructor_kwargs=dict(preset=job.preset, weights=job.weights, config=config,
                                   checkpoint=job.checkpoint, prompt=job.prompt),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        batch_size=1,
        batch_format="pandas",
        num_gpus=1 if use_gpu else 0,
        num_cpus=GPU_ACTOR_CPUS if use_gpu else 1,
        # Only nodes with that GPU (the cluster configs declare `accelerator_type:<name>` resources,
        # so the autoscaler can start such a node before any exists).
        **({"accelerator_type": job.accelerator_type} if job.accelerator_type else {}),
    )

    # 4. Assemble (CPU task per video, 1 CPU: x264 encode), started as soon as a video's last
    #    window comes out of the stream, so finished videos appear while others are restoring.
    #    in: all window rows of a video; out: its ledger row (written by the task itself).
    finish = ray.remote(num_cpus=1)(finish_video)
    waiting: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    running: list[ray.ObjectRef] = []
    for row in ds.iter_rows():
        windows = waiting[row[VIDEO_ID]]
        windows.append(dict(row))
        if len(windows) == row[WINDOWS]:
            running.append(finish.remote(waiting.pop(row[VIDEO_ID]), output_root=output_root, run_id=run_id,
                                         settings=settings))
        ready, running = ray.wait(running, num_returns=len(running), timeout=0) if running else ([], [])
        yield from ray.get(ready)
    assert not waiting, f"videos with missing windows: {sorted(waiting)}"
    while running:
        ready, running = ray.wait(running, num_returns=1)
        yield from ray.get(ready)


def _split_clashes(todo: Sequence[SourceFile], sources: Sequence[SourceFile]
                   ) -> tuple[list[SourceFile], list[tuple[SourceFile, str]]]:
    """Sources whose outputs would collide ("a.mov" and "a.mp4" both restore to "a.mp4") fail;
    retried on every run, so renaming one of them fixes it."""
    by_stem = collections.defaultdict(list)
    for s in sources:
        by_stem[posixpath.splitext(s.rel)[0]].append(s.rel)
    keep, clashing = [], []
    for s in todo:
        others = [rel for rel in by_stem[posixpath.splitext(s.rel)[0]] if rel != s.rel]
        if others:
            clashing.append((s, f"output name clashes with {', '.join(others)} (same name, other extension); "
                                f"rename one of them"))
        else:
            keep.append(s)
    return keep, clashing


def _failed_video(source: SourceFile, reason: str, output_root: str, run_id: str, settings: str) -> dict[str, Any]:
    row = {SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, VIDEO_ID: video_id(source.url),
           OUTPUT_STEM: output_stem(output_root, source.rel), STAGING: ""}
    return finish_video([failed_row(row, reason, permanent=False)], output_root=output_root, run_id=run_id,
                        settings=settings)


def _remove_if_empty(folder: str) -> None:
    """Drop the staging folder once no video has segments left in it (local disk keeps empty folders)."""
    fs, path = storage.filesystem(folder)
    if fs.exists(path) and not fs.find(path):
        storage.remove(folder, recursive=True)
