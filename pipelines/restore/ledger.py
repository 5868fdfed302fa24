"""The run ledger under `<output>/_ledger/`: Parquet rows per video and per window, appended by every
run and never rewritten. It is the resume point, the nightly diff and the audit trail.

    _ledger/videos/<run>-<video id>.parquet    one row per finished video (done or failed)
    _ledger/_windows/<run>-<video id>.parquet  one row per window of it (hidden from discovery)
    _ledger/_previews/<rel>.png                before/after still per restored video (hidden too)
    _ledger/summary.json                       the latest run's counts
    _ledger/_runs/, _ledger/_leases/           run heartbeats and per-video leases (lease.py)
    _ledger/_corrupt/                          ledger files that could not be read, set aside

`pyarrow.dataset.dataset("<output>/_ledger/videos")` reads the video rows. Reading the whole `_ledger`
folder gives the same rows (pyarrow's discovery skips names starting with "_" or ".": window rows and
previews) once told `exclude_invalid_files=True`, as summary.json is not Parquet. A file is written
whole (atomically) when its video finishes, so a killed run loses no finished video's row.
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.restore.rows import (ASSEMBLE_SECONDS, CHECKSUM, CONTENT, DEINTERLACED, DEVICE, DONE, END, ERROR,
                                    FAILED, FINGERPRINT, FINISHED_AT, FRAMES, OUTPUT, PERMANENT, REL, REPEATS,
                                    RESTORE_SECONDS, REUSED, RUN_ID, SECONDS, SEGMENT, SETTINGS, SOURCE, START, STATUS,
                                    WINDOW, WINDOWS, WINDOWS_REUSED)
from pipelines.storage import LEDGER_FOLDER, SourceFile

log = logging.getLogger(__name__)

VIDEOS = f"{LEDGER_FOLDER}/videos"
WINDOW_ROWS = f"{LEDGER_FOLDER}/_windows"
PREVIEWS = f"{LEDGER_FOLDER}/_previews"
SUMMARY = f"{LEDGER_FOLDER}/summary.json"
CORRUPT = f"{LEDGER_FOLDER}/_corrupt"  # ledger files that could not be read, set aside

VIDEO_SCHEMA = pa.schema([
    (SOURCE, pa.string()),  # URL of the source video
    (REL, pa.string()),  # its path below the input root
    (FINGERPRINT, pa.string()),  # size:etag-or-mtime when it was restored
    (CHECKSUM, pa.string()),  # the store's checksum of the source then ("crc32c:...", "md5:..."), or null
    (CONTENT, pa.string()),  # "sha256:..." of the source's bytes, or null (never read)
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
    write_videos(output_root, f"{row[RUN_ID]}-{video_id}", [row])


def write_windows(output_root: str, video_id: str, run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        _write(storage.join(output_root, WINDOW_ROWS, f"{run_id}-{video_id}.parquet"), rows, WINDOW_SCHEMA)


def read_videos(output_root: str) -> list[dict[str, Any]]:
    """Every video row ever written under `output_root`, oldest first. Only the ledger's own files
    are read (`*.parquet` directly in videos/: an input folder named `_ledger/videos` restores to
    outputs beside them, which are left alone). A file that cannot be read (truncated by a full disk,
    damaged) is set aside under `_ledger/_corrupt/` with a warning: its videos are restored again,
    and the run starts."""
    fs, path = storage.filesystem(storage.join(output_root, VIDEOS))
    try:
        names = sorted(name for name in fs.ls(path, detail=False) if name.endswith(".parquet")
                       and not posixpath.basename(name).startswith((".", "_")))  # temporaries
    except FileNotFoundError:
        return []
    try:
        table = pads.dataset(names, filesystem=fs, format="parquet", schema=VIDEO_SCHEMA).to_table()
    except (pa.ArrowException, OSError):
        table = _read_readable(output_root, fs, names)
    return sorted(table.to_pylist(), key=lambda r: (r[FINISHED_AT], r[RUN_ID]))


def _read_readable(output_root: str, fs: Any, names: Sequence[str]) -> pa.Table:
    """The video rows of every file that reads; the others moved to `_ledger/_corrupt/`."""
    tables = []
    for name in names:
        try:
            tables.append(pq.read_table(name, filesystem=fs, schema=VIDEO_SCHEMA))
        except (pa.ArrowException, OSError) as e:
            aside = storage.join(output_root, CORRUPT, posixpath.basename(name))
            log.warning("ledger file %s cannot be read (%s): moved to %s; its videos will be restored again",
                        name, e, aside)
            target = storage.split_url(aside)[1]
            fs.makedirs(posixpath.dirname(target), exist_ok=True)
            fs.mv(name, target)
    return pa.concat_tables(tables) if tables else VIDEO_SCHEMA.empty_table()


def latest_by_rel(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest row of each source, by its path below the input root (rows oldest first, as
    `read_videos` returns them). Keyed by `rel`, not URL, so the ledger stays valid when the
    archive or the output is moved or copied (another mount, another bucket). Each carries
    `repeats`: how many runs in a row ended it the same way (failed, same source, settings, reason)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        before = latest.get(row[REL])
        again = before is not None and row[STATUS] == FAILED and all(
            before[key] == row[key] for key in (STATUS, FINGERPRINT, SETTINGS, ERROR))
        latest[row[REL]] = {**row, REPEATS: before[REPEATS] + 1 if again else 1}
    return latest


@dataclass(frozen=True)
class Selection:
    todo: list[SourceFile]
    done: list[SourceFile]  # restored before with these settings, output still there
    bad: list[tuple[SourceFile, str]]  # unchanged sources that failed for good before, with the reason
    copied: Sequence[tuple[SourceFile, dict[str, Any]]] = ()  # done or bad, known by content under a new fingerprint
    # {rel: (reason, runs in a row)} of `todo` sources the last run failed, unchanged since
    failed_before: dict[str, tuple[str, int]] = field(default_factory=dict)


Digests = Callable[[Sequence[SourceFile]], dict[str, str]]
"""{rel: "sha256:..."} of the given sources' content (read on the driver)."""


def select(sources: Sequence[SourceFile], latest: dict[str, dict[str, Any]], settings: str,
           outputs: Sequence[SourceFile], retry_failed: bool = False, digests: Digests | None = None) -> Selection:
    """Which sources this run restores: those never done for their content and these settings.
    Resume and nightly incremental runs are the same rule. A done video whose output was deleted
    since is restored again; a source that failed for good (`permanent`: not a video, truncated, ...)
    is retried only when it changes, or with `retry_failed`; other failures (out of memory, storage
    errors) are always retried. `outputs` lists the output folder.

    A source is known by its fingerprint (size and etag or mtime: free to list); when that changed
    but the size did not, by its content: the store's checksum if both sides have one of a kind,
    else its SHA-256 (`digests`, read only for these). So a copied archive (`cp -r`, another bucket
    or part size) is recognised instead of restored again; the caller records the new fingerprint
    (`copied`) so the next run knows it for free.
    """
    present = {posixpath.splitext(o.rel)[0] for o in outputs}  # "a/b" for a/b.mp4 or a/b.mkv
    rows = {s.rel: latest[s.rel] for s in sources if s.rel in latest and latest[s.rel][SETTINGS] == settings}
    moved = [s for s in sources if s.rel in rows and rows[s.rel][FINGERPRINT] != s.fingerprint]
    copies = _copies(moved, rows, digests)
    todo, done, bad, copied, failed_before = [], [], [], [], {}
    for source in sources:
        row = rows.get(source.rel)
        if row is not None and row[FINGERPRINT] != source.fingerprint and source.rel not in copies:
            row = None  # changed since
        if row is not None and row[STATUS] == DONE and posixpath.splitext(source.rel)[0] in present:
            done.append(source)
        elif row is not None and row[STATUS] == FAILED and row[PERMANENT] and not retry_failed:
            bad.append((source, row[ERROR]))
        else:
            todo.append(source)
            if row is not None and row[STATUS] == FAILED:
                failed_before[source.rel] = (row[ERROR], row[REPEATS])
            continue
        if source.rel in copies:
            copied.append((source, row))
    return Selection(todo, done, bad, copied, failed_before)


def _copies(moved: Sequence[SourceFile], rows: dict[str, dict[str, Any]], digests: Digests | None) -> set[str]:
    """The rels of `moved` sources (new fingerprint) whose content is still the recorded one."""
    same, unsure = set(), []
    for source in moved:
        row = rows[source.rel]
        if row[FINGERPRINT].split(":", 1)[0] != str(source.size):
            continue  # another size: changed
        kind = source.checksum.split(":", 1)[0]
        if source.checksum and (row[CHECKSUM] or "").startswith(f"{kind}:"):
            if row[CHECKSUM] == source.checksum:
                same.add(source.rel)
        elif row[CONTENT] and digests is not None:
            unsure.append(source)
    if unsure:
        contents = digests(unsure)
        same.update(s.rel for s in unsure if contents[s.rel] == rows[s.rel][CONTENT])
    return same


def recognised_rows(copied: Sequence[tuple[SourceFile, dict[str, Any]]], run_id: str) -> list[dict[str, Any]]:
    """The ledger rows that record copies under their new fingerprints (same outcome, this run)."""
    return [{**row, SOURCE: source.url, FINGERPRINT: source.fingerprint, CHECKSUM: source.checksum or row.get(CHECKSUM),
             RUN_ID: run_id, FINISHED_AT: now()} for source, row in copied]


def write_videos(output_root: str, name: str, rows: Sequence[dict[str, Any]]) -> None:
    """Several video rows in one file (`name`.parquet under videos/)."""
    if rows:
        _write(storage.join(output_root, VIDEOS, f"{name}.parquet"), rows, VIDEO_SCHEMA)


def write_summary(output_root: str, summary: dict[str, Any]) -> None:
    data = json.dumps(summary, indent=2, default=str).encode()
    storage.write_bytes_atomic(storage.join(output_root, SUMMARY), data)


def preview_url(output_root: str, rel: str) -> str:
    return storage.join(output_root, PREVIEWS, posixpath.splitext(rel)[0] + ".png")


def _write(url: str, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    with storage.atomic_output(url) as tmp:
        pq.write_table(table, tmp)
