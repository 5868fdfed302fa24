"""The driver's end of the restore pipeline: it gathers the window rows coming out of the restore
stage into videos, starts each video's assembly task once its last window is in, waits on those tasks
within their deadlines, and turns work that was lost (windows that never came back, a stream that
stopped, an assembly that crashed or ran too long) into failed ledger rows, written from here."""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import ray

from pipelines.listing import SourceFile
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.context import RestoreRun
from pipelines.restore.faults import TASK_RETRIES, Assemblies, describe, lost_windows
from pipelines.restore.lease import claim_video
from pipelines.restore.outcome import record_failure
from pipelines.restore.plan_stage import failed_row
from pipelines.restore.rows import (CHECKSUM, DONE_ELSEWHERE, FINGERPRINT, FRAMES, LEASED, OUTPUT_STEM,
                                    PREVIOUS_ERROR, PROMPT, REL, REPEATS, RESTORE_SECONDS, SETTINGS, SOURCE, STAGING, STATUS,
                                    VIDEO_ID, WINDOW_INDEX, WINDOWS, WINDOWS_REUSED, video_columns, video_id)

log = logging.getLogger(__name__)

# Host memory an assembly task declares to Ray (so that the scheduler, not the OOM killer, fits tasks
# to a node): a group of decoded segment frames and the encoder's buffers. A declared bound, not a
# measured peak.
ASSEMBLY_MEMORY = 2 * 2**30


def gather(dataset: ray.data.Dataset, run: RestoreRun, sources: Sequence[SourceFile],
           failed_before: dict[str, tuple[str, int]], gate: ray.actor.ActorHandle,
           cpu_nodes: dict[str, str] | None) -> Iterator[dict[str, Any]]:
    """Each video's ledger row as it finishes, every video of `sources` exactly once (lost work
    included: see faults.py). `dataset`: the restore pipeline (`dataset.build_dataset`), whose
    window rows come out in any order; each video's ticket goes back to `gate` (plan_gate.py) as its
    last window comes out.

    Assembly (CPU task per video, 1 CPU: x264 encode) starts as soon as a video's last window comes
    out of the stream, so finished videos appear while others are restoring. in: all window rows of a
    video; out: its ledger row (written by the task itself), on the nodes `cpu_nodes` selects
    (`cpu_nodes.cpu_node_selector`; None: anywhere)."""
    finish = ray.remote(num_cpus=1, memory=ASSEMBLY_MEMORY, max_retries=TASK_RETRIES,
                        label_selector=cpu_nodes)(finish_video)  # off GPU nodes (cpu_nodes.py)
    assemblies = Assemblies()
    waiting: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    stream_error = None
    arrived: set[str] = set()  # videos whose every window came out of the stream
    try:
        for row in dataset.iter_rows():
            video = waiting[row[VIDEO_ID]]
            video.append(dict(row))
            if len(video) == row[WINDOWS]:
                video = waiting.pop(row[VIDEO_ID])
                arrived.add(row[VIDEO_ID])
                gate.leave.remote()  # its planning ticket: the next video may be planned
                if row[STATUS] in (LEASED, DONE_ELSEWHERE):  # another run's: nothing to assemble or record
                    yield video[0]
                    continue
                assemblies.add(finish.remote(video, run=run), video[0], int(row[FRAMES]))
            yield from _ledger_rows(assemblies.finished(wait=0), run)
    except Exception as e:  # noqa: BLE001 - the stream itself failed (no restore actor could start)
        log.error("the restore stage stopped: %s", describe(e), exc_info=True)
        stream_error = f"the restore stage stopped: {describe(e)}"
    # What never came back (after the bounded retries) fails here, with what is known of why.
    for source in sources:
        vid = video_id(source.url)
        if vid in arrived:
            continue
        got = waiting.get(vid, [])
        reason = stream_error or lost_windows(got[0][WINDOWS] if got else None, [r[WINDOW_INDEX] for r in got])
        # The run's loss, not the source's: never counted toward "the same failure three runs in a row".
        row = failed_video(source_row(source, failed_before, run), reason, run, counted=False)
        if row is not None:
            yield row
    while assemblies.running:
        yield from _ledger_rows(assemblies.finished(wait=None), run)


def source_row(source: SourceFile, failed_before: dict[str, tuple[str, int]], run: RestoreRun) -> dict[str, Any]:
    """A source's whole row, as the scenes stage completes it (for the videos the driver records)."""
    previous_error, repeats = failed_before.get(source.rel, ("", 0))
    row = {SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, CHECKSUM: source.checksum,
           PROMPT: source.prompt, PREVIOUS_ERROR: previous_error, REPEATS: repeats}
    return row | video_columns(row, run.for_video(row))


def _ledger_rows(finished: Iterator[tuple[dict[str, Any], dict[str, Any] | str]], run: RestoreRun
                 ) -> Iterator[dict[str, Any]]:
    """Ledger rows of finished assemblies; a failed or cancelled one is recorded from the driver."""
    for video, outcome in finished:
        row = outcome if isinstance(outcome, dict) else failed_video(video, outcome, run)
        if row is not None:
            yield row


def failed_video(row: dict[str, Any], reason: str, run: RestoreRun, *, permanent: bool = False,
                 counted: bool = True) -> dict[str, Any] | None:
    """Record a video that failed before or after the workers (a source row or a window row of it):
    retried by the next run unless `permanent`; `counted` False for a reason of the run's (the stream
    stopped, windows lost with their nodes), which never makes a source permanent (`outcome.failure`). A ledger write that fails (the store is down) is logged; the run's
    summary still counts the video. None when another run holds the video (or finished it): its to record.
    """
    run = run.for_video(row)
    try:
        if not claim_video(run, row[REL], row[FINGERPRINT]).mine:
            return None  # claimed already (the usual case), or taken here: failures of unclaimed videos too
    except Exception:  # noqa: BLE001 - the store is down: recorded in the summary only
        log.warning("could not claim %s to record its failure", row[SOURCE], exc_info=True)
    row = {key: row.get(key) for key in (SOURCE, REL, FINGERPRINT, CHECKSUM, PROMPT, VIDEO_ID, PREVIOUS_ERROR,
                                          REPEATS)} | {
        OUTPUT_STEM: run.layout.output_stem(row[REL]), STAGING: ""}
    failed = failed_row(row, reason, permanent=permanent)
    try:
        return record_failure(run, failed, counted=counted)
    except Exception:  # noqa: BLE001
        log.error("could not record the failure of %s in the ledger (%s)", row[SOURCE], reason, exc_info=True)
        return {**failed, SETTINGS: run.settings, WINDOWS_REUSED: 0, RESTORE_SECONDS: 0.0, WINDOWS: 0}
