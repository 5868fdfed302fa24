"""The run ledger under `<output>/_ledger/`: Parquet rows per video and per window. It is the resume
point, the nightly diff and the audit trail (which sources a run restores, decided from it: selection.py).
Its files (layout.py names every path):

    _ledger/videos/<run>-<video id>.parquet    a finished video's row, written whole when it finishes
    _ledger/videos/part-<time>-<run>.parquet   compacted: the latest row of every video (`compact`)
    _ledger/_history/part-<time>-<run>.parquet rows a newer one replaced (kept for the audit trail)
    _ledger/_windows/...                       one row per window, per video, then per run (compacted)
    _ledger/_previews/<rel>.png                before/after still per restored video (hidden too)
    _ledger/summary.json                       the latest run's counts
    _ledger/_runs/, _ledger/_leases/           run heartbeats and per-video leases (lease.py)
    _ledger/_corrupt/                          ledger files that could not be read, set aside

A video's row is written by the task that finishes it, so a killed run loses no finished video; every
1,000 videos the run merges its rows into one file (`merge_journals`). At its end a run compacts:
every file in videos/ becomes one file of the latest row per video, and the rows it replaced move to
_history/. So a run reads one large file and the few rows written since (not one small file per
video per run), and `pyarrow.dataset.dataset("<output>/_ledger/videos")` (or
DuckDB's `read_parquet('.../videos/*.parquet')`, or Spark) reads the current state. Runs that compact
at once can leave the same row in two files: readers take the newest row per `rel` (`latest`), and
the next compaction merges them. A row is deleted only once a file that holds it is written.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.restore.context import RestoreRun
from pipelines.restore.layout import OutputLayout
from pipelines.restore.rows import (ASSEMBLE_SECONDS, CHECKSUM, CONTENT, DEINTERLACED, DEVICE, END, ERROR, FINGERPRINT,
                                    FINISHED_AT, FRAMES, HEIGHT, INTERLACING, MODEL_SCALE, NOTES, OUTPUT, OUTPUT_SIZE,
                                    PERMANENT, PROMPT, REL, REPEATS, RESTORE_SECONDS, REUSED, RUN_ID, SAR, SECONDS,
                                    SEGMENT, SETTINGS, SOURCE, START, STATUS, WIDTH, WINDOW_INDEX, WINDOWS,
                                    WINDOWS_REUSED)

log = logging.getLogger(__name__)

PART = "part-"  # compacted files start so; the others hold one video's row (or a run's copies)
JOURNAL_BATCH = 1000  # a running run merges its videos' row files every this many videos

VIDEO_SCHEMA = pa.schema([
    (SOURCE, pa.string()),  # URL of the source video
    (REL, pa.string()),  # its path below the input root
    (FINGERPRINT, pa.string()),  # size:etag-or-mtime when it was restored
    (CHECKSUM, pa.string()),  # the store's checksum of the source then ("crc32c:...", "md5:..."), or null
    (CONTENT, pa.string()),  # "sha256:..." of the source's bytes, or null (never read)
    (SETTINGS, pa.string()),  # hash of the settings the output depends on (preset, scale, ...)
    (OUTPUT, pa.string()),  # URL of the restored video; null when failed
    (OUTPUT_SIZE, pa.int64()),  # its size in bytes when published: a replaced output is noticed; null when failed
    (STATUS, pa.string()),  # "done" | "failed"
    (ERROR, pa.string()),  # reason, null when done
    (PERMANENT, pa.bool_()),  # the source itself is bad: an unchanged file is not retried
    (REPEATS, pa.int64()),  # failed: runs in a row that failed the unchanged source so (this one included)
    (FRAMES, pa.int64()),  # frames in the video (0 when it could not be read); pictures after deinterlacing
    (DEINTERLACED, pa.string()),  # "" progressive; else how it was deinterlaced, e.g. "bwdif, field rate, tff"
    (INTERLACING, pa.string()),  # why: the decision and its evidence ("progressive: stream flags none, idet tff, ...")
    (SAR, pa.string()),  # the output's sample aspect ratio ("64:45"); null when failed (and in rows before it)
    (WIDTH, pa.int64()),  # the output's picture size as encoded; null when failed (and in rows before it)
    (HEIGHT, pa.int64()),
    (MODEL_SCALE, pa.int64()),  # the scale the model restored at (--scale, or what reached --size); null before it
    (PROMPT, pa.string()),  # the prompt it was restored with (--prompt, --prompts, a sidecar); null before it
    (NOTES, pa.string()),  # streams not carried as they were, "; "-joined; "" when every one was; null when failed
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
    (WINDOW_INDEX, pa.int64()),
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


def write_video(layout: OutputLayout, video_id: str, row: dict[str, Any]) -> None:
    write_videos(layout, f"{row[RUN_ID]}-{video_id}", [row])


def write_videos(layout: OutputLayout, name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Several video rows in one file (`name`.parquet under videos/)."""
    if rows:
        _write(storage.join(layout.videos, f"{name}.parquet"), _table(rows, VIDEO_SCHEMA))


def write_windows(run: RestoreRun, video_id: str, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        _write(storage.join(run.layout.window_rows, f"{run.run_id}-{video_id}.parquet"), _table(rows, WINDOW_SCHEMA))


# -- reading -----------------------------------------------------------------------------------------


def read_state(layout: OutputLayout) -> pa.Table:
    """The latest row of every video under the output (VIDEO_SCHEMA, sorted by `rel`): the
    compacted file and the rows written since. Only the ledger's own files are read (`*.parquet`
    directly in videos/: an input folder named `_ledger/videos` restores to outputs beside them,
    which are left alone). A file that cannot be read (truncated by a full disk, damaged) is set
    aside under `_ledger/_corrupt/` with a warning: its videos are restored again, and the run starts."""
    return latest(_read(layout, _names(layout.videos), VIDEO_SCHEMA))


def latest(table: pa.Table) -> pa.Table:
    """The newest row (by `finished_at`, then `run_id`, then position) of each `rel` in `table`,
    sorted by `rel`. Sorted by index on the key columns: the table is copied once, to the result."""
    if not table.num_rows:
        return table
    keys = pa.table({REL: table[REL], FINISHED_AT: table[FINISHED_AT], RUN_ID: table[RUN_ID],
                     "_order": np.arange(table.num_rows)})
    order = pc.sort_indices(keys, sort_keys=[(REL, "ascending"), (FINISHED_AT, "ascending"),
                                             (RUN_ID, "ascending"), ("_order", "ascending")])
    rels = table[REL].take(order)
    last = pc.fill_null(pc.not_equal(rels.slice(0, len(rels) - 1), rels.slice(1)), True)  # before another rel
    keep = order.filter(np.append(last.to_numpy(zero_copy_only=False), True))
    if len(keep) == table.num_rows and pc.all(pc.equal(keep, pa.array(np.arange(table.num_rows)))).as_py():
        return table  # already one row per video, in order: a compacted file read alone (no copy)
    return table.take(keep)


def _names(folder: str) -> list[str]:
    fs, path = storage.filesystem(folder)
    try:
        return sorted(name for name in fs.ls(path, detail=False) if name.endswith(".parquet")
                      and not posixpath.basename(name).startswith((".", "_")))  # temporaries
    except FileNotFoundError:
        return []


def _read(layout: OutputLayout, names: Sequence[str], schema: pa.Schema) -> pa.Table:
    """The rows of the files `names` (paths in the output's filesystem), in `schema` (older files lack
    newer columns: null). One dataset scan; if a file is damaged, file by file, setting it aside."""
    fs, _ = storage.filesystem(layout.root)
    if not names:
        return schema.empty_table()
    try:
        return pads.dataset(list(names), filesystem=fs, format="parquet", schema=schema).to_table()
    except (pa.ArrowException, OSError):
        pass
    tables = []
    for name in names:
        try:
            tables.append(pq.read_table(name, filesystem=fs, schema=schema))
        except FileNotFoundError:
            continue  # compacted by another run meanwhile: its rows are in that run's part
        except (pa.ArrowException, OSError) as e:
            aside = storage.join(layout.corrupt, posixpath.basename(name))
            log.warning("ledger file %s cannot be read (%s): moved to %s; its videos will be restored again",
                        name, e, aside)
            target = storage.split_url(aside)[1]
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            fs.mv(name, target)
    return pa.concat_tables(tables) if tables else schema.empty_table()


# -- compaction --------------------------------------------------------------------------------------


def merge_journals(run: RestoreRun) -> int:
    """Merge this run's per-video row files (video and window rows) into one file each, as a long run
    goes (every `JOURNAL_BATCH` videos): the ledger never holds more than about that many small files
    of a live run, and a run killed after a million videos leaves a few large files, not a million.
    Returns how many video row files were merged."""
    merged = 0
    for folder, schema in ((run.layout.videos, VIDEO_SCHEMA), (run.layout.window_rows, WINDOW_SCHEMA)):
        names = [n for n in _names(folder) if posixpath.basename(n).startswith(f"{run.run_id}-")]
        if len(names) > 1:
            _merge(run, folder, names, schema)
            merged += len(names) if folder == run.layout.videos else 0
    return merged


def _merge(run: RestoreRun, folder: str, names: Sequence[str], schema: pa.Schema) -> None:
    """The rows of files `names` into one new file of `folder`; then the files go."""
    _write(storage.join(folder, _part_name(run.run_id)), _read(run.layout, names, schema))
    _remove(run.layout, names)


def _part_name(run_id: str) -> str:
    return f"{PART}{now():%Y%m%dT%H%M%S%fZ}-{run_id}-{uuid.uuid4().hex[:6]}.parquet"


def compact(run: RestoreRun) -> dict[str, int]:
    """Merge the ledger's files: videos/ into one file of the latest row per video (the replaced rows
    to _history/), and the window rows' per-video files into one file for the run. Safe beside other
    runs (they only add files; one compacting at once leaves duplicates the next one merges).
    Returns {"video_files": merged, "rows": latest rows kept}."""
    layout = run.layout
    windows = [n for n in _names(layout.window_rows) if not posixpath.basename(n).startswith(PART)]
    if len(windows) > 1:
        _merge(run, layout.window_rows, windows, WINDOW_SCHEMA)
    names = _names(layout.videos)
    if len(names) < 2:
        return {"video_files": 0, "rows": 0}
    rows = _read(layout, names, VIDEO_SCHEMA)
    keep = latest(rows)
    stamp = _part_name(run.run_id)
    if rows.num_rows > keep.num_rows:
        _write(storage.join(layout.history, stamp), _replaced(rows, keep))
    _write(storage.join(layout.videos, stamp), keep)
    _remove(layout, names)
    return {"video_files": len(names), "rows": keep.num_rows}


def _replaced(rows: pa.Table, keep: pa.Table) -> pa.Table:
    """The rows of `rows` that are not the kept ones (by rel, run and time; exact duplicates go)."""
    key = [REL, RUN_ID, FINISHED_AT]
    kept = keep.select(key).append_column("_kept", pa.array(np.ones(keep.num_rows, bool)))
    marked = rows.join(kept, key, join_type="left outer")
    return marked.filter(pc.is_null(marked["_kept"])).drop_columns(["_kept"]).select(VIDEO_SCHEMA.names)


def _remove(layout: OutputLayout, names: Sequence[str]) -> None:
    fs, _ = storage.filesystem(layout.root)
    for name in names:
        try:
            fs.rm(name)
        except FileNotFoundError:
            pass  # another run's compaction merged it first


def write_summary(layout: OutputLayout, summary: dict[str, Any]) -> None:
    data = json.dumps(summary, indent=2, default=str).encode()
    storage.write_bytes_atomic(layout.summary, data)


def _table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def _write(url: str, table: pa.Table) -> None:
    with storage.atomic_output(url) as tmp:
        pq.write_table(table, tmp)
