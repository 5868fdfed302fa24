"""Restore a whole video archive with STAR on Ray: every video under an input URL becomes a restored
video under an output URL, with a Parquet ledger that makes reruns resume and skip finished work.

    run(ArchiveJob(input="gs://archive/raw", output="gs://archive/restored", weights="/weights"))

The pipeline (dataset.py) reads top to bottom: sources -> scenes -> restore; the driver gathers its
rows into videos and assembles each (gather.py).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from pipelines import listing, storage, waits
from pipelines.actors import actor_pool, gpu_actor_resources
from pipelines.cpu_nodes import cpu_node_selector
from pipelines.job_support import ray_started
from pipelines.listing import SourceFile
from pipelines.restore import ledger, metrics
from pipelines.restore.context import RestoreRun, new_run_id
from pipelines.restore.dataset import build_dataset, source_tables
from pipelines.restore.faults import Stopped, stop_on_signals
from pipelines.restore.gather import failed_video, gather, source_row
from pipelines.restore.job import ArchiveJob, validate
from pipelines.restore.layout import OutputLayout
from pipelines.restore.lease import Leases, live_holder
from pipelines.restore.plan_gate import PlanGate, tickets
from pipelines.restore.outputs import missing_outputs
from pipelines.restore.prompts import with_prompts
from pipelines.restore.report import write_report
from pipelines.restore.samples import samples_layout
from pipelines.restore.rows import DONE_ELSEWHERE, LEASED, STATUS
from pipelines.restore.selection import Selection, recognised_rows, select, split_clashes
from pipelines.restore.summary import RunStats, format_summary
from pipelines.shared_storage import check_shared

log = logging.getLogger(__name__)

_DIGEST_THREADS = 8  # reads overlap well on buckets; on a local disk they share its bandwidth


def run(job: ArchiveJob) -> dict[str, Any]:
    """Restore what is new or changed under `job.input`; returns the run's summary (also written to
    `<output>/_ledger/summary.json`). Raises ConfigError, before Ray starts, for bad configuration."""
    # 0. Fail fast, before any GPU is asked for: arguments, weights, storage.
    validate(job)
    input_root, layout = storage.canonical(job.input), OutputLayout(storage.canonical(job.output))
    warning = job.warning()  # tiny's random weights, bicubic's plain interpolation
    if warning:
        log.warning("WARNING: %s", warning)
    if job.excerpt() is not None:  # a sample run: its own layout, never the full run's ledger or leases
        layout = samples_layout(layout.root, job.settings_key(), job.excerpt())
        log.info("sample run: %s of every video, into %s", job.excerpt().folder, layout.root)
    run_id = new_run_id()
    started_at = ledger.now()

    # 1. Sources (driver): list the archive; drop what the ledger records as done for the same
    #    fingerprint and settings (resume and nightly runs are the same rule). The output tree is
    #    not listed: the ledger says what is done, and a batch of those outputs is checked.
    sources, skipped, selection, restore_run = plan_run(job, input_root, layout, run_id)
    # This run's claims (taken as work starts on each video) hold while its heartbeat beats.
    with Leases(restore_run, timedelta(minutes=job.lease_minutes)) as leases:
        # Copies of sources known by content (`cp -r`, another bucket): recorded under their new
        # fingerprints, so the next run knows them without reading them.
        ledger.write_videos(layout, f"{run_id}-copies", recognised_rows(selection.copied, run_id))
        header = dict(run_id=run_id, input=input_root, output=layout.root, settings=job.settings(),
                      settings_key=restore_run.settings, listed=len(sources),
                      **{f"skipped_{kind}": count for kind, count in skipped.items()}, skipped_done=len(selection.done),
                      recognised_copies=len(selection.copied), skipped_failed=len(selection.bad),
                      restored=len(selection.todo), ledger=layout.videos, warning=warning, started_at=started_at)
        log.info("run %s: %d videos under %s, %d already done, %d unchanged bad inputs skipped, %d to restore "
                 "(each claimed as work on it starts: one another run holds is left to it)", run_id, len(sources),
                 input_root, len(selection.done), len(selection.bad), len(selection.todo))
        stats = RunStats(len(selection.todo))
        stopped = None
        try:
            with stop_on_signals():
                if selection.todo:
                    _restore_all(job, selection, sources, restore_run, stats, leases)
                    _take_over(job, selection, sources, restore_run, stats, leases)
                else:
                    log.info("nothing to restore: every video under %s is done or an unchanged bad input", input_root)
        except Stopped as e:  # the leases are freed on the way out; what finished is in the summary
            log.warning("run %s %s: %d of %d videos finished", run_id, e, stats.done + stats.failed,
                        stats.to_restore)
            stopped = signal.Signals(e.signum).name
        if stats.held:
            log.info("left to the runs that hold them or finished them: %s", stats.describe_held())
        if not stopped:  # a stop has seconds of grace; the next run compacts
            _compact(restore_run)
        summary = stats.summary(**header, stopped=stopped, finished_at=ledger.now())
        ledger.write_summary(layout, summary)
        write_report(layout, summary)
    log.info("%s", format_summary(summary))
    if stopped:
        raise Stopped(getattr(signal, stopped))
    return summary


def _take_over(job: ArchiveJob, selection: Selection, sources: Sequence[SourceFile], run: RestoreRun,
               stats: RunStats, leases: Leases) -> None:
    """Restore the videos another run held when this one reached them, once those runs are found dead.

    A run whose driver or head was lost (this run is, most likely, its retry) keeps its leases until
    its heartbeat expires; a retry that left them to it would end with nothing done. So this run waits
    for those heartbeats: a holder whose heartbeat is renewed meanwhile is alive and keeps its videos;
    one that expires frees them, and this run restores them. The wait ends when no holder is left to
    wait for: at the latest when the last silent heartbeat expires (its expiry is fixed, at most that
    run's lease time ahead)."""
    poll = min(30.0, job.lease_minutes * 60 / 5)  # a live holder renews every lease time / 5
    waiting, free, first_expiry = set(stats.leased), [], {}
    while waiting:
        for rel in sorted(waiting):
            held = live_holder(run, rel)
            if held is None:
                free.append(rel)
                waiting.discard(rel)
            elif held[1] is None or held[1] > first_expiry.setdefault(held[0], held[1]):
                waiting.discard(rel)  # running on this machine, or renewed since: alive, working on it
        if waiting:
            log.info("waiting for %d videos held by runs that have not renewed their leases (%s): restored here if "
                     "they expire", len(waiting), ", ".join(sorted({stats.leased[r] for r in waiting})))
            time.sleep(poll)
    if free:
        log.info("taking over %d videos whose runs ended or died", len(free))
        stats.retake(free)
        todo = [s for s in selection.todo if s.rel in set(free)]
        _restore_all(job, dataclasses.replace(selection, todo=todo), sources, run, stats, leases)


def _compact(run: RestoreRun) -> None:
    """Merge the ledger's files (`ledger.compact`); a failure only leaves more files to read next time."""
    try:
        started = time.perf_counter()
        merged = ledger.compact(run)
        log.info("ledger compacted: %d files into one of %d rows in %.1f s", merged["video_files"], merged["rows"],
                 time.perf_counter() - started)
    except Exception:  # noqa: BLE001
        log.warning("could not compact the ledger under %s (the next run tries again)", run.layout.root,
                    exc_info=True)


def _merge_journals(run: RestoreRun) -> None:
    """`ledger.merge_journals`; a failure only leaves more small files to read."""
    try:
        log.info("ledger: merged %d video rows of this run into one file", ledger.merge_journals(run))
    except Exception:  # noqa: BLE001
        log.warning("could not merge this run's ledger rows under %s", run.layout.root, exc_info=True)


def _restore_all(job: ArchiveJob, selection: Selection, sources: Sequence[SourceFile], run: RestoreRun,
                 stats: RunStats, leases: Leases) -> None:
    """Restore `selection.todo` (each claimed as work on it starts), counting each finished one in
    `stats` (and the metrics)."""
    todo, refused = split_clashes(selection.todo, sources, run.layout.root)
    for source, reason, permanent in refused:  # decided on the driver: no Ray needed
        video = failed_video(source_row(source, selection.failed_before, run), reason, run, permanent=permanent)
        if video is not None:
            log.info(stats.add(video))
    if not todo:
        return
    # stop_on_signals after ray_started: ray.init() sets a SIGTERM handler of its own (a bare exit)
    with ray_started(), stop_on_signals():
        leases.renew()  # the heartbeat now names this driver's node (a retry takes over if it is lost)
        check_shared(job.input, "--input", writable=False)  # workers read the sources
        check_shared(job.output, "--output")  # and stage, assemble and record there
        if job.weights is not None:  # every GPU node's actors load them (a bucket is copied to each node)
            check_shared(job.weights, "--weights", writable=False)
        metrics.videos_queued(len(todo))
        # GPU actors asked for before any GPU exists: a line every minute while the autoscaler adds one.
        gpus = job.device == "gpu" or job.accelerator_type is not None
        with waits.waiting_lines(gpu_actor_resources(job.accelerator_type) if gpus else {}, "the restore actors"):
            use_gpu, actors = actor_pool(job.device, job.actors, job.accelerator_type)
            gate = PlanGate.remote(tickets(actors))
            cpu_nodes = cpu_node_selector()  # asked once: the scenes and the assembly tasks go to the same nodes
            dataset = build_dataset(job, run, source_tables(todo, selection.failed_before), gate, use_gpu, actors,
                                    cpu_nodes)
            for video in gather(dataset, run, todo, selection.failed_before, gate, cpu_nodes):
                if video[STATUS] in (LEASED, DONE_ELSEWHERE):
                    stats.skip(video)
                else:
                    log.info(stats.add(video))
                    metrics.video_finished(video[STATUS])
                    if (stats.done + stats.failed) % ledger.JOURNAL_BATCH == 0:
                        _merge_journals(run)
                metrics.videos_queued(stats.to_restore - stats.finished)
    storage.remove_empty_folders(run.layout.staging)  # never a folder another live run is filling


def plan_run(job: ArchiveJob, input_root: str, layout: OutputLayout, run_id: str
             ) -> tuple[list[SourceFile], dict[str, int], Selection, RestoreRun]:
    """The driver's work before Ray starts: (sources listed, files skipped on purpose, what to restore,
    the run: its settings key, computed here once, and when it read the ledger). Reads the input's
    listing, the ledger's state and a batch of outputs; never lists the output tree."""
    sources, skipped = listing.list_sources(input_root)
    sources = with_prompts(sources, job.prompts, job.prompt)
    read_at = ledger.now()
    run = RestoreRun(layout, run_id, job.settings_key(), read_at, square_pixels=job.square_pixels,
                     output_format=job.output_format(), target=job.target(), prompt=job.prompt,
                     sample=job.excerpt(), name=job.run_label())
    own_keys = {s.rel: run.key_for(s.prompt) for s in sources if s.prompt != job.prompt}
    selection = select(sources, ledger.read_state(layout), run.settings, video_settings=own_keys,
                       retry_failed=job.retry_failed, digests=_digests,
                       missing_outputs=missing_outputs(layout, job.check_outputs))
    return sources, skipped, selection, run


def _digests(sources: Sequence[SourceFile]) -> dict[str, str]:
    """SHA-256 of sources whose fingerprint changed at the same size (a copy, most likely), read in
    parallel on the driver: once, as the ledger then records their new fingerprints."""
    log.info("reading %d sources whose size is unchanged but whose etag or mtime changed (copies?) to compare "
             "their content with the ledger's", len(sources))

    def digest(source: SourceFile) -> tuple[str, str]:
        try:
            with storage.open_input(source.url) as f:
                return source.rel, storage.content_digest(f)
        except OSError as e:  # gone or unreadable since it was listed: not known as a copy, so restored (and fails)
            log.warning("could not read %s to compare it with the ledger: %s", source.url, e)
            return source.rel, ""

    with ThreadPoolExecutor(max_workers=_DIGEST_THREADS) as pool:
        return dict(pool.map(digest, sources))
