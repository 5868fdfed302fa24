"""Restore a whole video archive with STAR on Ray: every video under an input URL becomes a restored
video under an output URL, with a Parquet ledger that makes reruns resume and skip finished work.

    run(ArchiveJob(input="gs://archive/raw", output="gs://archive/restored", weights="/weights"))

The pipeline (`_restore_videos`) reads top to bottom: sources -> scenes -> restore -> assemble.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import posixpath
import signal
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import ray

from pipelines import storage, waits
from pipelines.actors import actor_pool, gpu_actor_resources
from pipelines.restore import ledger, metrics
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.faults import (TASK_RETRIES, Assemblies, Stopped, bound_retries, describe, lost_windows,
                                     stop_on_signals)
from pipelines.restore.job import ArchiveJob, validate
from pipelines.restore.lease import Leases, describe_holders
from pipelines.restore.plan_stage import failed_row, plan_video
from pipelines.restore.restore_stage import RestoreWindows
from pipelines.restore.rows import (CHECKSUM, FINGERPRINT, FRAMES, OUTPUT_STEM, PREVIOUS_ERROR, REL, REPEATS,
                                    RESTORE_SECONDS, SETTINGS, SOURCE, STAGING, STATUS, VIDEO_ID, WINDOW, WINDOWS,
                                    WINDOWS_REUSED, output_stem, staging_folder, staging_root, video_id)
from pipelines.restore.summary import RunStats, format_summary
from pipelines.storage import SourceFile
from star_model.restore import RestoreConfig

log = logging.getLogger(__name__)

GPU_ACTOR_CPUS = 2  # decode of the window and FFV1 encode of the segment run beside the model
_DIGEST_THREADS = 8  # reads overlap well on buckets; on a local disk they share its bandwidth


def run(job: ArchiveJob) -> dict[str, Any]:
    """Restore what is new or changed under `job.input`; returns the run's summary (also written to
    `<output>/_ledger/summary.json`). Raises ConfigError, before Ray starts, for bad configuration."""
    # 0. Fail fast, before any GPU is asked for: arguments, weights, storage.
    config = validate(job)
    input_root, output_root = storage.canonical(job.input), storage.canonical(job.output)
    warning = job.warning()  # tiny's random weights, bicubic's plain interpolation
    if warning:
        log.warning("WARNING: %s", warning)
    run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    started_at = ledger.now()

    # 1. Sources (driver): list the archive; drop what the ledger records as done for the same
    #    fingerprint and settings (resume and nightly runs are the same rule).
    sources, skipped = storage.list_sources(input_root)
    selection = _select(job, sources, output_root)
    # Copies of sources known by content (`cp -r`, another bucket): recorded under their new
    # fingerprints, so the next run knows them without reading them.
    ledger.write_videos(output_root, f"{run_id}-copies", ledger.recognised_rows(selection.copied, run_id))
    # Claim the rest: a video another live run is restoring (an overlapping nightly run, a manual
    # run) is left to it. The claims last until this run ends, or its heartbeat expires if it dies.
    with Leases(output_root, run_id, timedelta(minutes=job.lease_minutes)) as leases:
        selection, held = _claim(leases, job, selection, output_root)
        header = dict(run_id=run_id, input=input_root, output=output_root, settings=job.settings(),
                      settings_key=job.settings_key(), listed=len(sources), skipped_hidden=skipped["hidden"],
                      skipped_not_video=skipped["not_video"], skipped_done=len(selection.done),
                      recognised_copies=len(selection.copied),
                      skipped_failed=len(selection.bad), skipped_leased=len(held),
                      leased_by=sorted({holder for _, holder in held}), restored=len(selection.todo),
                      ledger=storage.join(output_root, ledger.VIDEOS), warning=warning,
                      started_at=started_at)
        log.info("run %s: %d videos under %s, %d already done, %d unchanged bad inputs skipped, %d being "
                 "restored by other runs, %d to restore", run_id, len(sources), input_root, len(selection.done),
                 len(selection.bad), len(held), len(selection.todo))
        if held:
            log.info("left to the runs that hold them: %s", describe_holders(held))
        stats = RunStats(len(selection.todo))
        stopped = None
        try:
            with stop_on_signals():
                if selection.todo:
                    _restore_all(job, config, selection, sources, output_root, run_id, stats)
                else:
                    log.info("nothing to restore: every video under %s is done, an unchanged bad input, or "
                             "being restored by another run", input_root)
        except Stopped as e:  # the leases are freed on the way out; what finished is in the summary
            log.warning("run %s %s: %d of %d videos finished", run_id, e, stats.done + stats.failed,
                        stats.to_restore)
            stopped = signal.Signals(e.signum).name
        summary = stats.summary(**header, stopped=stopped, finished_at=ledger.now())
        ledger.write_summary(output_root, summary)
    log.info("%s", format_summary(summary))
    if stopped:
        raise Stopped(getattr(signal, stopped))
    return summary


def _claim(leases: Leases, job: ArchiveJob, selection: ledger.Selection, output_root: str
           ) -> tuple[ledger.Selection, list[tuple[SourceFile, str]]]:
    """The selection less what other live runs hold, and those (source, holder run) pairs."""
    claims = leases.claim(selection.todo)
    if not claims.taken_over:
        return dataclasses.replace(selection, todo=claims.mine), claims.held
    # A run that ended since our ledger read may have finished some of them: read it again.
    again = _select(job, claims.mine, output_root)
    return ledger.Selection(again.todo, selection.done + again.done, selection.bad + again.bad,
                            [*selection.copied, *again.copied], again.failed_before), claims.held


def _restore_all(job: ArchiveJob, config: RestoreConfig, selection: ledger.Selection, sources: Sequence[SourceFile],
                 output_root: str, run_id: str, stats: RunStats) -> None:
    """Restore the claimed videos (`selection.todo`), counting each finished one in `stats` (and the metrics)."""
    settings = job.settings_key()
    todo, refused = _split_clashes(selection.todo, sources, output_root)
    for source, reason, permanent in refused:  # decided on the driver: no Ray needed
        row = {SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, CHECKSUM: source.checksum,
               VIDEO_ID: video_id(source.url)}
        log.info(stats.add(_failed_video(row, reason, output_root, run_id, settings, permanent=permanent)))
    if not todo:
        return
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init()  # local Ray, or the cluster of `ray job submit` (RAY_ADDRESS)
    try:
        with stop_on_signals():  # again: ray.init() sets a SIGTERM handler of its own (a bare exit)
            metrics.videos_queued(len(todo))
            # GPU actors asked for before any GPU exists: a line every minute while the autoscaler adds one.
            gpus = job.device == "gpu" or job.accelerator_type is not None
            with waits.waiting_lines(gpu_actor_resources(job.accelerator_type) if gpus else {}, "the restore actors"):
                for video in _restore_videos(job, config, todo, selection.failed_before, output_root, run_id):
                    log.info(stats.add(video))
                    metrics.video_finished(video[STATUS])
                    metrics.videos_queued(stats.to_restore - stats.done - stats.failed)
    finally:
        if started_ray:
            ray.shutdown()
    storage.remove_empty_folders(staging_root(output_root))  # never a folder another live run is filling


def _select(job: ArchiveJob, sources: Sequence[SourceFile], output_root: str) -> ledger.Selection:
    latest = ledger.latest_by_rel(ledger.read_videos(output_root))
    return ledger.select(sources, latest, job.settings_key(), storage.list_videos(output_root), job.retry_failed,
                         digests=_digests)


def _digests(sources: Sequence[SourceFile]) -> dict[str, str]:
    """SHA-256 of sources whose fingerprint changed at the same size (a copy, most likely), read in
    parallel on the driver: once, as the ledger then records their new fingerprints."""
    log.info("reading %d sources whose size is unchanged but whose etag or mtime changed (copies?) to compare "
             "their content with the ledger's", len(sources))

    def digest(source: SourceFile) -> tuple[str, str]:
        with storage.open_input(source.url) as f:
            return source.rel, storage.content_digest(f)

    with ThreadPoolExecutor(max_workers=_DIGEST_THREADS) as pool:
        return dict(pool.map(digest, sources))


def _restore_videos(job: ArchiveJob, config: RestoreConfig, sources: Sequence[SourceFile],
                    failed_before: dict[str, tuple[str, int]], output_root: str, run_id: str
                    ) -> Iterator[dict[str, Any]]:
    """The restore pipeline, top to bottom; yields each video's ledger row as it finishes, every
    video of `sources` exactly once (lost work included: see faults.py)."""
    settings = job.settings_key()
    use_gpu, actors = actor_pool(job.device, job.actors, job.accelerator_type)
    actor_faults = bound_retries()

    # 1. Sources: one row per video, each its own block so that the scenes tasks run in parallel.
    #    out: source, rel, fingerprint, checksum, video_id, output_stem, staging, previous_error, repeats
    rows = {video_id(s.url): {SOURCE: s.url, REL: s.rel, FINGERPRINT: s.fingerprint, CHECKSUM: s.checksum,
                              VIDEO_ID: video_id(s.url), OUTPUT_STEM: output_stem(output_root, s.rel),
                              STAGING: staging_folder(output_root, s.url, s.fingerprint, settings),
                              PREVIOUS_ERROR: failed_before.get(s.rel, ("", 0))[0],
                              REPEATS: failed_before.get(s.rel, ("", 0))[1]} for s in sources}
    ds = ray.data.from_items(list(rows.values()), override_num_blocks=len(rows))

    # 2. Scenes (CPU tasks, 1 CPU: probe and PySceneDetect decode one stream each): fan out a video
    #    into its windows, or into one failed row. in: a source row; out: window rows (plan_stage).
    ds = ds.flat_map(plan_video, fn_kwargs=dict(window=job.window, overlap=job.overlap, detector=job.detector,
                                                deinterlace=job.deinterlace, max_pixels=job.max_frame_pixels),
                     num_cpus=1, max_retries=TASK_RETRIES)
    # One window per block: a video's windows spread over the actor pool instead of one actor
    # taking the whole block (and a block lost with its actor is one window).
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
        **actor_faults,
    )

    # 4. Assemble (CPU task per video, 1 CPU: x264 encode), started as soon as a video's last
    #    window comes out of the stream, so finished videos appear while others are restoring.
    #    in: all window rows of a video; out: its ledger row (written by the task itself).
    finish = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(finish_video)
    assemblies = Assemblies()
    waiting: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    stream_error = None
    try:
        for row in ds.iter_rows():
            windows = waiting[row[VIDEO_ID]]
            windows.append(dict(row))
            if len(windows) == row[WINDOWS]:
                windows = waiting.pop(row[VIDEO_ID])
                rows.pop(row[VIDEO_ID])
                ref = finish.remote(windows, output_root=output_root, run_id=run_id, settings=settings)
                assemblies.add(ref, windows[0], int(row[FRAMES]))
            yield from _ledger_rows(assemblies.finished(wait=0), output_root, run_id, settings)
    except Exception as e:  # noqa: BLE001 - the stream itself failed (no restore actor could start)
        log.error("the restore stage stopped: %s", describe(e), exc_info=True)
        stream_error = f"the restore stage stopped: {describe(e)}"
    # What never came back (after the bounded retries) fails here, with what is known of why.
    for vid, source_row in rows.items():
        arrived = waiting.get(vid, [])
        reason = stream_error or lost_windows(arrived[0][WINDOWS] if arrived else None, [r[WINDOW] for r in arrived])
        yield _failed_video(source_row, reason, output_root, run_id, settings)
    while assemblies.running:
        yield from _ledger_rows(assemblies.finished(wait=None), output_root, run_id, settings)


def _ledger_rows(finished: Iterator[tuple[dict[str, Any], dict[str, Any] | str]], output_root: str, run_id: str,
                 settings: str) -> Iterator[dict[str, Any]]:
    """Ledger rows of finished assemblies; a failed or cancelled one is recorded from the driver."""
    for video, outcome in finished:
        yield outcome if isinstance(outcome, dict) else _failed_video(video, outcome, output_root, run_id, settings)


def _split_clashes(todo: Sequence[SourceFile], sources: Sequence[SourceFile], output_root: str
                   ) -> tuple[list[SourceFile], list[tuple[SourceFile, str, bool]]]:
    """(sources to restore, [(source, reason, permanent)] for those refused on the driver): keys that
    could write outside the output (`storage.unsafe_key`: refused for good while unchanged), and
    sources whose outputs would collide ("a.mov" and "a.mp4" both restore to "a.mp4"; "A.mp4" and
    "a.mp4" on an output that folds case), retried on every run, so renaming one of them fixes it."""
    fold = str.casefold if storage.case_insensitive(output_root) else str
    by_stem = collections.defaultdict(list)
    for s in sources:
        by_stem[fold(posixpath.splitext(s.rel)[0])].append(s.rel)
    keep, refused = [], []
    for s in todo:
        unsafe = storage.unsafe_key(s.rel)
        others = [rel for rel in by_stem[fold(posixpath.splitext(s.rel)[0])] if rel != s.rel]
        if unsafe:
            refused.append((s, f"unsafe object key {s.rel!r}: {unsafe}; rename the object", True))
        elif others:
            refused.append((s, f"output name clashes with {', '.join(others)} (same name, other extension or "
                               f"case); rename one of them", False))
        else:
            keep.append(s)
    return keep, refused


def _failed_video(row: dict[str, Any], reason: str, output_root: str, run_id: str, settings: str, *,
                  permanent: bool = False) -> dict[str, Any]:
    """Record a video that failed before or after the workers (a source row or a window row of it):
    retried by the next run unless `permanent`. A ledger write that fails (the store is down) is logged; the run's
    summary still counts the video."""
    row = {key: row.get(key) for key in (SOURCE, REL, FINGERPRINT, CHECKSUM, VIDEO_ID, PREVIOUS_ERROR, REPEATS)} | {
        OUTPUT_STEM: output_stem(output_root, row[REL]), STAGING: ""}
    failed = failed_row(row, reason, permanent=permanent)
    try:
        return finish_video([failed], output_root=output_root, run_id=run_id, settings=settings)
    except Exception:  # noqa: BLE001
        log.error("could not record the failure of %s in the ledger (%s)", row[SOURCE], reason, exc_info=True)
        return {**failed, SETTINGS: settings, WINDOWS_REUSED: 0, RESTORE_SECONDS: 0.0, WINDOWS: 0}
