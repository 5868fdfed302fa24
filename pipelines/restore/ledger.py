"""The run ledger under `<output>/_ledger/`: Parquet rows per video and per window, appended by every
run and never rewritten. It is the resume point, the nightly diff and the audit trail.

    _ledger/videos/<run>-<video id>.parquet    one row per finished video (done or failed)
    _ledger/_windows/<run>-<video id>.parquet  one row per window of it (hidden from discovery)
    _ledger/_previews/<rel>.png                before/after still per restored video (hidden too)
    _ledger/summary.json                       the latest run's counts
    _ledger/_runs/, _ledger/_leases/           run heartbeats and per-video leases (lease.py)

`pyarrow.dataset.dataset("<output>/_ledger/videos")` reads the video rows. Reading the whole `_ledger`
folder gives the same rows (pyarrow's discovery skips names starting with "_" or ".": window rows and
previews) once told `exclude_invalid_files=True`, as summary.json is not Parquet. A file is written
whole (atomically) when its video finishes, so a killed run loses no finished video's row.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.restore.rows import (ASSEMBLE_SECONDS, DEINTERLACED, DEVICE, DONE, END, ERROR, FAILED, FINGERPRINT,
                                    FINISHED_AT, FRAMES, OUTPUT, PERMANENT, REL, RESTORE_SECONDS, REUSED, RUN_ID,
                                    SECONDS, SEGMENT, SETTINGS, SOURCE, START, STATUS, WINDOW, WINDOWS, WINDOWS_REUSED)
from pipelines.storage import LEDGER_FOLDER, SourceFile

VIDEOS = f"{LEDGER_FOLDER}/videos"
WINDOW_ROWS = f"{LEDGER_FOLDER}/_windows"
PREVIEWS = f"{LEDGER_FOLDER}/_previews"
SUMMARY = f"{LEDGER_FOLDER}/summary.json"

VIDEO_SCHEMA = pa.schema([
    (SOURCE, pa.string()),  # URL of the source video
    (REL, pa.string()),  # its path below the input root
    (FINGERPRINT, pa.string()),  # size:etag-or-mtime when it was restored
    (SETTINGS, pa.string()),  # hash of the settings the output depends on (preset, scale, ...)
    (OUTPUT, pa.string()),  # URL of the restored video; null when failed
    (STATUS, pa.string()),  # "done" | "failed"
    (ERROR, pa.string()),  # reason, null when done
    (PERMANENT, pa.bool_()),  # the source itself is bad: an unchanged file is not retried
    (FRAMES, pa.int64()),  # frames in the video (0 when it could not be read); pictures after deinterlacing
    (DEINTERLACED, pa.string()),  # "" progressive; else how it was deinterlaced, e.g. "bwdif, field rate, tff"
    (WINDOWS, pa.int64()),  # windows restored (0 when it never reached the restore actors)
    (WINDOWS_REUSED, pa.int64()),  # restored by an earlier, interrupted run
    (RESTORE_SECONDS, pa.float64()),  # actor time on this run's windows
    (ASSEMBLE_SECONDS, pa.float64()),
    (DEVICE, pa.string()),  # "cuda" | "cpu" | "" (never reached an actor)
    (RUN_ID, pa.string()),
    (FINISHED_AT, pa.timestamp("us", tz="UTC")),
])

WINDOW_SCHEMA = pa.schema([
    (SOURCE, pa.string()),
    (FINGERPRINT, pa.string()),
    (RUN_ID, pa.string()),
    (WINDOW, pa.int64()),
    (START, pa.int64()),
    (END, pa.int64()),
    (SEGMENT, pa.string()),
    (STATUS, pa.string()),
    (ERROR, pa.string()),
    (SECONDS, pa.float64()),
    (REUSED, pa.bool_()),
    (DEVICE, pa.string()),
])


def now() -> datetime:
    return datetime.now(timezone.utc)


def write_video(output_root: str, video_id: str, row: dict[str, Any]) -> None:
    _write(storage.join(output_root, VIDEOS, f"{row[RUN_ID]}-{video_id}.parquet"), [row], VIDEO_SCHEMA)


def write_windows(output_root: str, video_id: str, run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        _write(storage.join(output_root, WINDOW_ROWS, f"{run_id}-{video_id}.parquet"), rows, WINDOW_SCHEMA)


def read_videos(output_root: str) -> list[dict[str, Any]]:
    """Every video row ever written under `output_root`, oldest first."""
    fs, path = storage.filesystem(storage.join(output_root, VIDEOS))
    if not fs.exists(path):
        return []
    table = pads.dataset(path, filesystem=fs, format="parquet", schema=VIDEO_SCHEMA).to_table()
    return sorted(table.to_pylist(), key=lambda r: (r[FINISHED_AT], r[RUN_ID]))


def latest_by_rel(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest row of each source, by its path below the input root (rows oldest first, as
    `read_videos` returns them). Keyed by `rel`, not URL, so the ledger stays valid when the
    archive or the output is moved or copied (another mount, another bucket)."""
    return {row[REL]: row for row in rows}


@dataclass(frozen=True)
class Selection:
    todo: list[SourceFile]
    done: list[SourceFile]  # restored before with these settings, output still there
    bad: list[tuple[SourceFile, str]]  # unchanged sources that failed for good before, with the reason


def select(sources: Sequence[SourceFile], latest: dict[str, dict[str, Any]], settings: str,
           outputs: Sequence[SourceFile], retry_failed: bool = False) -> Selection:
    """Which sources this run restores: those never done for their current fingerprint and these
    settings. Resume and nightly incremental runs are the same rule. A done video whose output was
    deleted since is restored again; a source that failed for good (`permanent`: not a video,
    truncated, ...) is retried only when it changes, or with `retry_failed`; other failures (out
    of memory, storage errors) are always retried. `outputs` lists the output folder."""
    present = {posixpath.splitext(o.rel)[0] for o in outputs}  # "a/b" for a/b.mp4 or a/b.mkv
    todo, done, bad = [], [], []
    for source in sources:
        row = latest.get(source.rel)
        same = row is not None and row[FINGERPRINT] == source.fingerprint and row[SETTINGS] == settings
        if same and row[STATUS] == DONE and posixpath.splitext(source.rel)[0] in present:
            done.append(source)
        elif same and row[STATUS] == FAILED and row[PERMANENT] and not retry_failed:
            bad.append((source, row[ERROR]))
        else:
            todo.append(source)
    return Selection(todo, done, bad)


def write_summary(output_root: str, summary: dict[str, Any]) -> None:
    data = json.dumps(summary, indent=2, default=str).encode()
    storage.write_bytes_atomic(storage.join(output_root, SUMMARY), data)


def preview_url(output_root: str, rel: str) -> str:
    return storage.join(output_root, PREVIEWS, posixpath.splitext(rel)[0] + ".png")


def _write(url: str, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    with storage.atomic_output(url) as tmp:
        pq.write_table(table, tmp)
