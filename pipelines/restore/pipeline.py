"""Restore a whole video archive with STAR on Ray: every video under an input URL becomes a restored
video under an output URL, with a Parquet ledger that makes reruns resume and skip finished work.

    run(ArchiveJob(input="gs://archive/raw", output="gs://archive/restored", weights="/weights"))

The pipeline (`_restore_videos`) reads top to bottom: sources -> scenes -> restore -> assemble.
"""

from __future__ import annotations

import collections
import logging
import posixpath
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import ray

from pipelines import storage, waits
from pipelines.actors import actor_pool, gpu_actor_resources
from pipelines.restore import ledger, metrics
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.faults import (TASK_RETRIES, Assemblies, Stopped, bound_retries, describe, lost_windows,
                                     stop_on_signals)
from pipelines.restore.job import ArchiveJob, validate
from pipelines.restore.lease import Leases, claim_video
from pipelines.restore.outputs import missing_outputs
from pipelines.restore.plan_stage import claim_and_plan, failed_row
from pipelines.restore.restore_stage import RestoreWindows
from pipelines.restore.rows import (CHECKSUM, DONE_ELSEWHERE, FINGERPRINT, FRAMES, LEASED, OUTPUT_STEM,
                                    PREVIOUS_ERROR, REL, REPEATS, RESTORE_SECONDS, SETTINGS, SOURCE, STAGING, STATUS,
                                    VIDEO_ID, WINDOW, WINDOWS, WINDOWS_REUSED, done_key, output_stem, video_columns,
                                    staging_root, video_id)
from pipelines.restore.summary import RunStats, format_summary
from pipelines.storage import SourceFile
from star_model.restore import RestoreConfig

log = logging.getLogger(__name__)

GPU_ACTOR_CPUS = 2  # decode of the window and FFV1 encode of the segment run beside the model
_DIGEST_THREADS = 8  # reads overlap well on buckets; on a local disk they share its bandwidth
SOURCE_CHUNKS = 256  # the sources enter Ray Data in at most this many pieces, however many there are


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
    #    fingerprint and settings (resume and nightly runs are the same rule). The output tree is
    #    not listed: the ledger says what is done, and a batch of those outputs is checked.
    sources, skipped, selection, read_at = plan_run(job, input_root, output_root)
    # This run's claims (taken as work starts on each video) hold while its heartbeat beats.
    with Leases(output_root, run_id, timedelta(minutes=job.lease_minutes)):
        # Copies of sources known by content (`cp -r`, another bucket): recorded under their new
        # fingerprints, so the next run knows them without reading them.
        ledger.write_videos(output_root, f"{run_id}-copies", ledger.recognised_rows(selection.copied, run_id))
        header = dict(run_id=run_id, input=input_root, output=output_root, settings=job.settings(),
                      settings_key=job.settings_key(), listed=len(sources), skipped_hidden=skipped["hidden"],
                      skipped_not_video=skipped["not_video"], skipped_done=len(selection.done),
                      recognised_copies=len(selection.copied), skipped_failed=len(selection.bad),
                      restored=len(selection.todo), ledger=storage.join(output_root, ledger.VIDEOS),
                      warning=warning, started_at=started_at)
        log.info("run %s: %d videos under %s, %d already done, %d unchanged bad inputs skipped, %d to restore "
                 "(each claimed as work on it starts: one another run holds is left to it)", run_id, len(sources),
                 input_root, len(selection.done), len(selection.bad), len(selection.todo))
        stats = RunStats(len(selection.todo))
        stopped = None
        try:
            with stop_on_signals():
                if selection.todo:
                    _restore_all(job, config, selection, sources, output_root, run_id, read_at, stats)
                else:
                    log.info("nothing to restore: every video under %s is done or an unchanged bad input", input_root)
        except Stopped as e:  # the leases are freed on the way out; what finished is in the summary
            log.warning("run %s %s: %d of %d videos finished", run_id, e, stats.done + stats.failed,
                        stats.to_restore)
            stopped = signal.Signals(e.signum).name
        if stats.held:
            log.info("left to the runs that hold them or finished them: %s", stats.describe_held())
        if not stopped:  # a stop has seconds of grace; the next run compacts
            _compact(output_root, run_id)
        summary = stats.summary(**header, stopped=stopped, finished_at=ledger.now())
        ledger.write_summary(output_root, summary)
    log.info("%s", format_summary(summary))
    if stopped:
        raise Stopped(getattr(signal, stopped))
    return summary


def _compact(output_root: str, run_id: str) -> None:
    """Merge the ledger's files (`ledger.compact`); a failure only leaves more files to read next time."""
    try:
        started = time.perf_counter()
        merged = ledger.compact(output_root, run_id)
        log.info("ledger compacted: %d files into one of %d rows in %.1f s", merged["video_files"], merged["rows"],
                 time.perf_counter() - started)
    except Exception:  # noqa: BLE001
        log.warning("could not compact the ledger under %s (the next run tries again)", output_root, exc_info=True)


def _merge_journals(output_root: str, run_id: str) -> None:
    """`ledger.merge_journals`; a failure only leaves more small files to read."""
    try:
        log.info("ledger: merged %d video rows of this run into one file", ledger.merge_journals(output_root, run_id))
    except Exception:  # noqa: BLE001
        log.warning("could not merge this run's ledger rows under %s", output_root, exc_info=True)


def _restore_all(job: ArchiveJob, config: RestoreConfig, selection: ledger.Selection, sources: Sequence[SourceFile],
                 output_root: str, run_id: str, read_at: datetime, stats: RunStats) -> None:
    """Restore `selection.todo` (each claimed as work on it starts), counting each finished one in
    `stats` (and the metrics)."""
    settings = job.settings_key()
    todo, refused = _split_clashes(selection.todo, sources, output_root)
    for source, reason, permanent in refused:  # decided on the driver: no Ray needed
        video = _failed_video(_source_row(source, selection.failed_before, output_root, settings), reason, output_root, run_id, settings, read_at, permanent=permanent)
        if video is not None:
            log.info(stats.add(video))
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
                for video in _restore_videos(job, config, todo, selection.failed_before, output_root, run_id,
                                             read_at):
                    if video[STATUS] in (LEASED, DONE_ELSEWHERE):
                        stats.skip(video)
                    else:
                        log.info(stats.add(video))
                        metrics.video_finished(video[STATUS])
                        if (stats.done + stats.failed) % ledger.JOURNAL_BATCH == 0:
                            _merge_journals(output_root, run_id)
                    metrics.videos_queued(stats.to_restore - stats.finished)
    finally:
        if started_ray:
            ray.shutdown()
    storage.remove_empty_folders(staging_root(output_root))  # never a folder another live run is filling


def plan_run(job: ArchiveJob, input_root: str, output_root: str
             ) -> tuple[list[SourceFile], dict[str, int], ledger.Selection, datetime]:
    """The driver's work before Ray starts: (sources listed, files skipped on purpose, what to restore,
    when the ledger was read). Reads the input's listing, the ledger's state and a batch of outputs;
    never lists the output tree."""
    sources, skipped = storage.list_sources(input_root)
    read_at = ledger.now()
    selection = ledger.select(sources, ledger.read_state(output_root), job.settings_key(),
                              retry_failed=job.retry_failed, digests=_digests,
                              missing_outputs=missing_outputs(output_root, job.check_outputs))
    return sources, skipped, selection, read_at


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
                    failed_before: dict[str, tuple[str, int]], output_root: str, run_id: str, read_at: datetime
                    ) -> Iterator[dict[str, Any]]:
    """The restore pipeline, top to bottom; yields each video's ledger row as it finishes, every
    video of `sources` exactly once (lost work included: see faults.py)."""
    settings = job.settings_key()
    use_gpu, actors = actor_pool(job.device, job.actors, job.accelerator_type)
    actor_faults = bound_retries()

    # 1. Sources: the rows go to the object store in bounded chunks (the driver holds a reference per
    #    chunk, never a block per video), then one row per block, so that the scenes tasks run in
    #    parallel. out: source, rel, fingerprint, checksum, previous_error, repeats
    ds = ray.data.from_arrow_refs([ray.put(table) for table in source_tables(sources, failed_before)])
    ds = ds.repartition(target_num_rows_per_block=1)

    # 2. Scenes (CPU tasks, 1 CPU: probe and PySceneDetect decode one stream each): fan out a video
    #    into its windows, or into one failed row. in: a source row; out: window rows (plan_stage).
    #    Each video is claimed first and its row completed (video_id, output_stem, staging:
    #    `claim_and_plan`).
    ds = ds.flat_map(claim_and_plan, fn_kwargs=dict(output_root=output_root, run_id=run_id, settings=settings,
                                                    read_at=read_at, window=job.window, overlap=job.overlap,
                                                    detector=job.detector, deinterlace=job.deinterlace,
                                                    max_pixels=job.max_frame_pixels),
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
    arrived: set[str] = set()  # videos whose every window came out of the stream
    try:
        for row in ds.iter_rows():
            windows = waiting[row[VIDEO_ID]]
            windows.append(dict(row))
            if len(windows) == row[WINDOWS]:
                windows = waiting.pop(row[VIDEO_ID])
                arrived.add(row[VIDEO_ID])
                if row[STATUS] in (LEASED, DONE_ELSEWHERE):  # another run's: nothing to assemble or record
                    yield windows[0]
                    continue
                ref = finish.remote(windows, output_root=output_root, run_id=run_id, settings=settings)
                assemblies.add(ref, windows[0], int(row[FRAMES]))
            yield from _ledger_rows(assemblies.finished(wait=0), output_root, run_id, settings, read_at)
    except Exception as e:  # noqa: BLE001 - the stream itself failed (no restore actor could start)
        log.error("the restore stage stopped: %s", describe(e), exc_info=True)
        stream_error = f"the restore stage stopped: {describe(e)}"
    # What never came back (after the bounded retries) fails here, with what is known of why.
    for source in sources:
        vid = video_id(source.url)
        if vid in arrived:
            continue
        windows = waiting.get(vid, [])
        reason = stream_error or lost_windows(windows[0][WINDOWS] if windows else None, [r[WINDOW] for r in windows])
        video = _failed_video(_source_row(source, failed_before, output_root, settings), reason, output_root, run_id,
                              settings, read_at)
        if video is not None:
            yield video
    while assemblies.running:
        yield from _ledger_rows(assemblies.finished(wait=None), output_root, run_id, settings, read_at)


def source_tables(sources: Sequence[SourceFile], failed_before: dict[str, tuple[str, int]]) -> Iterator[pa.Table]:
    """The sources as at most SOURCE_CHUNKS Arrow tables: what the driver knows of each (the scenes
    tasks derive the rest, `video_columns`, so a million enter Ray Data in seconds)."""
    size = max(1, -(-len(sources) // SOURCE_CHUNKS))
    for first in range(0, len(sources), size):
        chunk = sources[first:first + size]
        before = [failed_before.get(s.rel, ("", 0)) for s in chunk]
        yield pa.table({SOURCE: [s.url for s in chunk], REL: [s.rel for s in chunk],
                        FINGERPRINT: [s.fingerprint for s in chunk], CHECKSUM: [s.checksum for s in chunk],
                        PREVIOUS_ERROR: [error for error, _ in before],
                        REPEATS: pa.array([repeats for _, repeats in before], pa.int64())})


def _source_row(source: SourceFile, failed_before: dict[str, tuple[str, int]], output_root: str, settings: str
                ) -> dict[str, Any]:
    """A source's whole row, as the scenes stage completes it (for the videos the driver records)."""
    previous_error, repeats = failed_before.get(source.rel, ("", 0))
    row = {SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, CHECKSUM: source.checksum,
           PREVIOUS_ERROR: previous_error, REPEATS: repeats}
    return row | video_columns(row, output_root, settings)


def _ledger_rows(finished: Iterator[tuple[dict[str, Any], dict[str, Any] | str]], output_root: str, run_id: str,
                 settings: str, read_at: datetime) -> Iterator[dict[str, Any]]:
    """Ledger rows of finished assemblies; a failed or cancelled one is recorded from the driver."""
    for video, outcome in finished:
        row = outcome if isinstance(outcome, dict) else _failed_video(video, outcome, output_root, run_id, settings,
                                                                     read_at)
        if row is not None:
            yield row


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


def _failed_video(row: dict[str, Any], reason: str, output_root: str, run_id: str, settings: str, read_at: datetime,
                  *, permanent: bool = False) -> dict[str, Any] | None:
    """Record a video that failed before or after the workers (a source row or a window row of it):
    retried by the next run unless `permanent`. A ledger write that fails (the store is down) is logged; the run's
    summary still counts the video. None when another run holds the video (or finished it): its to record.
    """
    try:
        if not claim_video(output_root, run_id, row[REL], done_key(row[FINGERPRINT], settings), read_at).mine:
            return None  # claimed already (the usual case), or taken here: failures of unclaimed videos too
    except Exception:  # noqa: BLE001 - the store is down: recorded in the summary only
        log.warning("could not claim %s to record its failure", row[SOURCE], exc_info=True)
    row = {key: row.get(key) for key in (SOURCE, REL, FINGERPRINT, CHECKSUM, VIDEO_ID, PREVIOUS_ERROR, REPEATS)} | {
        OUTPUT_STEM: output_stem(output_root, row[REL]), STAGING: ""}
    failed = failed_row(row, reason, permanent=permanent)
    try:
        return finish_video([failed], output_root=output_root, run_id=run_id, settings=settings)
    except Exception:  # noqa: BLE001
        log.error("could not record the failure of %s in the ledger (%s)", row[SOURCE], reason, exc_info=True)
        return {**failed, SETTINGS: settings, WINDOWS_REUSED: 0, RESTORE_SECONDS: 0.0, WINDOWS: 0}
