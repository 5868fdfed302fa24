"""A finished video's ledger row and how it is written: by the assembly task for a video whose windows
reached it (`assemble_stage.finish_video`), by the driver for one that failed before or around the
workers (`record_failure`). Either way the row is written where the outcome is known, and a video that
is done or bad for good frees its lease for others and clears its staging."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pipelines import storage
from pipelines.media.interlace import describe
from pipelines.restore import ledger
from pipelines.restore.context import RestoreRun
from pipelines.restore.lease import LeaseLost, check_held, record_finished
from pipelines.restore.rows import (ASSEMBLE_SECONDS, CHECKSUM, CONTENT, DEINTERLACE, DEINTERLACED, DEVICE, DONE, END,
                                    ERROR, FAILED, FIELD_ORDER, FINGERPRINT, FINISHED_AT, FRAMES, INTERLACING, KEEP_END, KEEP_START,
                                    MODEL_SCALE, OUTPUT, OUTPUT_SIZE, PERMANENT, PREVIOUS_ERROR, PROMPT, REL, REPEATS, RESTORE_SECONDS, REUSED,
                                    RUN_ID, SECONDS, SEGMENT, SETTINGS, SOURCE, START, STATUS, VIDEO_ID, WINDOW_INDEX,
                                    WINDOWS, WINDOWS_REUSED)

GIVE_UP_AFTER = 3  # runs in a row that fail an unchanged source the same way before it counts as a bad input

# Columns a window row carries into the ledger's window rows.
_WINDOW_LEDGER = (SOURCE, FINGERPRINT, WINDOW_INDEX, START, END, SEGMENT, STATUS, ERROR, SECONDS, REUSED, DEVICE)


def failure(error: str, permanent: bool, video: dict[str, Any], counted: bool = True) -> tuple[str, bool, int]:
    """(reason, permanent, repeats) of a failed video: `repeats` counts the runs in a row, this one
    included, that failed the unchanged source with this very reason (the scenes stage passes the last
    run's reason and count in the row). One that was not known to be permanent but repeats
    `GIVE_UP_AFTER` runs in a row is deterministic (a bug or an input the model cannot take), so it
    stops being retried every night, and its staging goes. Not `counted` (a reason of the run's, not
    the source's): repeats 0, never permanent, however often the run fails so."""
    if not counted:
        return error, permanent, 0
    repeats = int(video.get(REPEATS) or 0) + 1 if error == video.get(PREVIOUS_ERROR) else 1
    if permanent or repeats < GIVE_UP_AFTER:
        return error, permanent, repeats
    return (f"{error} (the same failure {GIVE_UP_AFTER} runs in a row on the unchanged source: no longer retried; "
            f"--retry-failed tries it again)"), True, repeats


def video_row(first: dict[str, Any], rows: Sequence[dict[str, Any]], run: RestoreRun, status: str,
              error: str | None, permanent: bool, started: float) -> dict[str, Any]:
    """The ledger row of a video (`first` its first window row, `rows` all of them) finished so."""
    restored = [r for r in rows if r[WINDOW_INDEX] >= 0]
    return {
        SOURCE: first[SOURCE], REL: first[REL], FINGERPRINT: first[FINGERPRINT], SETTINGS: run.settings,
        CHECKSUM: first.get(CHECKSUM) or None, CONTENT: first.get(CONTENT) or None,
        OUTPUT: first[OUTPUT] if status == DONE else None,
        OUTPUT_SIZE: storage.size(first[OUTPUT]) if status == DONE else None,
        STATUS: status, ERROR: error, PERMANENT: permanent,
        FRAMES: int(first[FRAMES]) if run.sample is None else _kept_pictures(restored), WINDOWS: len(restored),
        DEINTERLACED: describe(first[DEINTERLACE], first[FIELD_ORDER]) if first[DEINTERLACE] else "",
        INTERLACING: first.get(INTERLACING) or None,
        WINDOWS_REUSED: sum(bool(r[REUSED]) for r in restored),
        RESTORE_SECONDS: float(sum(r[SECONDS] for r in restored if not r[REUSED])),
        ASSEMBLE_SECONDS: time.perf_counter() - started,
        DEVICE: next((r[DEVICE] for r in restored if r[DEVICE]), ""),
        MODEL_SCALE: first.get(MODEL_SCALE) or None, PROMPT: first.get(PROMPT),
        RUN_ID: run.run_id, FINISHED_AT: ledger.now(),
    }


def _kept_pictures(windows: Sequence[dict[str, Any]]) -> int:
    """Pictures the windows give the output (their kept spans, cross-faded ones counted once): what a
    sample run writes of its excerpt, where the video's own count would overstate its work."""
    count, reached = 0, -1
    for start, end in sorted((int(w[KEEP_START]), int(w[KEEP_END])) for w in windows):
        count += max(0, end - max(start, reached))
        reached = max(reached, end)
    return count


def record(run: RestoreRun, first: dict[str, Any], rows: Sequence[dict[str, Any]], video: dict[str, Any]) -> None:
    """Write a finished video's window rows and its row (`video`). Done or bad for good: its lease
    records that (runs that read the ledger before this row was written skip the video at their claim)
    and its staging folder goes. A video that failed for another reason (out of memory, storage) keeps
    its segments: the next run retries only the windows that failed. A bad source changes before it is
    retried, which makes its staging folder a new one anyway."""
    ledger.write_windows(run, first[VIDEO_ID], [
        {**{column: r[column] for column in _WINDOW_LEDGER}, RUN_ID: run.run_id,
         SEGMENT: r[SEGMENT] or None, ERROR: r[ERROR] or None} for r in rows if r[WINDOW_INDEX] >= 0])
    ledger.write_video(run.layout, first[VIDEO_ID], video)
    if video[STATUS] == DONE or video[PERMANENT]:
        record_finished(run, first[REL], first[FINGERPRINT])
        storage.remove(run.layout.video_staging(first[VIDEO_ID]), recursive=True)


def record_failure(run: RestoreRun, failed: dict[str, Any], counted: bool = True) -> dict[str, Any]:
    """Write the ledger row of a video the driver found failed (`failed`: its one failed row,
    `plan_stage.failed_row`) and return it (`counted`: see `failure`). Fenced like an assembly: a run that lost the video's lease
    writes nothing; its row says so, for the summary only."""
    started = time.perf_counter()
    try:
        check_held(run, failed[REL])
    except LeaseLost as e:
        return video_row(failed, [failed], run, FAILED, str(e), False, started)
    error, permanent, repeats = failure(failed[ERROR], bool(failed[PERMANENT]), failed, counted)
    video = video_row(failed, [failed], run, FAILED, error, permanent, started) | {REPEATS: repeats}
    record(run, failed, [failed], video)
    return video
