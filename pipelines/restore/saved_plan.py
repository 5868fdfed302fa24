"""A video's plan (its windows, cuts and what the scenes stage found of it), kept in its staging folder
so that a run that did not finish it leaves the next run nothing to decode again: that run reads the
plan instead of reading, probing and scene-detecting the source. The folder is one version of the
source under the same settings (`RestoreRun.staging_folder`), and goes when the video is done or bad
for good, so a plan never outlives what it describes."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.restore.rows import OUTCOME, STAGING

log = logging.getLogger(__name__)


def plan_url(row: dict[str, Any], max_pixels: int | None) -> str:
    """Where `row`'s video keeps its plan. By `max_pixels` too (a run-only setting that fails large
    frames): a plan made under a higher limit is not taken as passing a lower one."""
    return storage.join(row[STAGING], f"plan-{max_pixels or 0}.parquet")


def save(url: str, row: dict[str, Any], windows: Sequence[dict[str, Any]]) -> None:
    """Keep the plan of `windows` (the scenes stage's pending rows of `row`'s video): the columns it
    added to the source row, less the restore stage's. A failed write only costs a decode next time."""
    known = set(row) | set(OUTCOME)
    planned = [{key: value for key, value in window.items() if key not in known} for window in windows]
    try:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(planned), buffer)
        storage.write_bytes_atomic(url, buffer.getvalue())
    except Exception:  # noqa: BLE001
        log.warning("could not keep the plan of %s at %s", row[STAGING], url, exc_info=True)


def load(url: str) -> list[dict[str, Any]] | None:
    """The plan kept at `url` (the columns `save` kept, a row per window), or None if there is none."""
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(url))).to_pylist()
    except FileNotFoundError:
        return None
