"""Are the outputs a run would skip still there? What is done is what the ledger says; the output
tree is never listed. Each run checks a bounded batch of the done videos' outputs (exists, and has
the size its row recorded), rotating through the archive run after run: a deleted or replaced output
is restored again by the run whose batch holds it, and an archive smaller than one batch is checked
whole on every run."""

from __future__ import annotations

import json
import logging
import math
import posixpath
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.restore.layout import OutputLayout
from pipelines.restore.rows import OUTPUT, OUTPUT_SIZE, REL

log = logging.getLogger(__name__)

CHECKS_PER_RUN = 10_000  # about this many stat/HEAD requests (a hash slot of the done videos): a second or two on a local disk, seconds on a bucket
_THREADS = 16


def missing_outputs(layout: OutputLayout, per_run: int = CHECKS_PER_RUN):
    """A `selection.MissingOutputs` for the output of `layout`, checking about `per_run` outputs (0: none)."""

    def missing(state: pa.Table, done: np.ndarray) -> set[str]:
        rows = _batch(layout, state, done, per_run)
        # Requests to a bucket overlap; a local disk answers a stat faster than a thread starts.
        local = storage.split_url(layout.root)[0] == "file"
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            intact = (map if local else pool.map)(lambda row: _intact(*row[1:]), rows)
            gone = {row[0] for row, ok in zip(rows, intact) if not ok}
        log.info("checked %d of %d done videos' outputs: %d gone or replaced", len(rows), len(done), len(gone))
        return gone

    return missing


def _batch(layout: OutputLayout, state: pa.Table, done: np.ndarray, per_run: int) -> list[tuple[str, str, int | None]]:
    """(rel, output URL, recorded size) of this run's batch of the `done` rows of `state`: all when they
    fit, else those whose rel hashes to this run's slot of ceil(done / per_run) slots (the slot
    advances every run)."""
    if per_run <= 0:
        return []
    slots = math.ceil(len(done) / per_run)
    if slots > 1:
        slot = _next_slot(layout) % slots
        done = done[_slots(state[REL], slots)[done] == slot]
    chosen = state.select([REL, OUTPUT, OUTPUT_SIZE]).take(pa.array(done, type=pa.int64()))
    rels, outputs, sizes = (chosen[c].to_pylist() for c in (REL, OUTPUT, OUTPUT_SIZE))
    # The output under this output root (the ledger may have been copied with the outputs).
    return [(rel, layout.output_stem(rel) + posixpath.splitext(output or "")[1], size)
            for rel, output, size in zip(rels, outputs, sizes)]


def _slots(rels: pa.ChunkedArray, slots: int) -> np.ndarray:
    """crc32(rel) % slots of every rel, read a slice at a time (a million rels never become Python
    strings at once)."""
    step = 100_000
    return np.concatenate([np.fromiter((zlib.crc32(rel.encode()) % slots for rel in rels.slice(i, step).to_pylist()),
                                       np.int64) for i in range(0, len(rels), step)] or [np.zeros(0, np.int64)])


def _intact(url: str, size: int | None) -> bool:
    fs, path = storage.filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return False
    return size is None or int(info["size"]) == size  # rows before sizes were recorded: exists is enough


def _next_slot(layout: OutputLayout) -> int:
    """The slot this run checks; the next run checks the following one (`{"next": slot}` in the cursor file)."""
    url = layout.outputs_cursor
    try:
        slot = int(json.loads(storage.read_bytes(url)).get("next", 0))
    except (FileNotFoundError, ValueError):
        slot = 0
    storage.write_bytes_atomic(url, json.dumps({"next": slot + 1}).encode())
    return slot
