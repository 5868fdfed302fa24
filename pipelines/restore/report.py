"""`<output>/_ledger/report.html`: one static page per run, written at its end (pipeline.py) beside
summary.json: the run's counts, its throughput, its failures grouped by what to do, and every video's
before/after still with a link to its output.

The page is self-contained (inline CSS and SVG, no script) and links only relatively (`_previews/...`
beside it, `../<rel>` for the outputs), so it reads the same from a local folder, a mount or a bucket's
web view. Everything that comes from a file name or an error is HTML-escaped. Its rows are this run's
rows of the ledger's state (`ledger.read_state`, the read every run starts with), filtered on the run.
"""

from __future__ import annotations

import html
import logging
import posixpath
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.listing import SKIPPED
from pipelines.restore import ledger
from pipelines.restore.failure_groups import group_failures
from pipelines.restore.layout import OutputLayout
from pipelines.restore.report_style import STYLE
from pipelines.restore.rows import DONE, ERROR, FAILED, FINISHED_AT, FRAMES, OUTPUT, PERMANENT, REL, RUN_ID, STATUS
from pipelines.restore.throughput_chart import throughput_svg

log = logging.getLogger(__name__)

MAX_VIDEOS = 2000  # videos shown with their stills; the ledger has the rest
MAX_PER_GROUP = 100  # failed videos named under each failure group


def write_report(layout: OutputLayout, summary: dict[str, Any]) -> None:
    """Write the run's page (atomically, any storage); a failure is a warning: the run's work is done."""
    try:
        state = ledger.read_state(layout)
        rows = state.filter(pc.equal(state[RUN_ID], summary["run_id"]))
        storage.write_bytes_atomic(layout.report, render(summary, rows, layout).encode())
    except Exception:  # noqa: BLE001 - the page is a view of the ledger, which is written
        log.warning("could not write the run's report page %s", layout.report, exc_info=True)


def render(summary: dict[str, Any], rows: pa.Table, layout: OutputLayout) -> str:
    """The page of the run `summary` (`RunStats.summary`), `rows` its ledger rows (VIDEO_SCHEMA)."""
    started, finished = _time(summary["started_at"]), _time(summary["finished_at"])
    title = f"Restore run {summary['run_id']}"
    when = f"{started:%Y-%m-%d %H:%M:%S} to {finished:%Y-%m-%d %H:%M:%S} UTC"
    if summary.get("stopped"):
        when += f", stopped by {summary['stopped']} (the next run goes on)"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="where">{_e(summary["input"])} &rarr; {_e(summary["output"])}<br>{_e(when)}</p>',
    ]
    if summary.get("warning"):
        parts.append(f'<p class="warning"><strong>Warning:</strong> {_e(summary["warning"])}</p>')
    parts += [_counts(summary), _throughput(summary, rows, started, finished), _failures(rows),
              _videos(rows, layout), "</main></body></html>"]
    return "\n".join(parts)


def _counts(summary: dict[str, Any]) -> str:
    cards = [("done", summary["done"], "ok"), ("failed", summary["failed"], "bad" if summary["failed"] else ""),
             ("already done", summary["skipped_done"], ""),
             ("unchanged bad inputs skipped", summary["skipped_failed"], ""),
             ("left to other runs", summary["skipped_leased"], ""),
             ("copies recognised", summary.get("recognised_copies", 0), ""),
             ("videos listed", summary["listed"], ""),
             ("frames restored", summary["frames"], ""),
             ("frames/s", f"{summary['frames_per_second']:.2f}", "")]
    if summary["actor_device"] == "gpu":
        cards.append(("GPU-seconds", f"{summary['gpu_seconds']:,.1f}", ""))
    elif summary["actor_device"] == "cpu":
        cards.append(("actor-seconds (CPU, no GPU)", f"{summary['actor_seconds']:,.1f}", ""))
    cards.append(("windows restored / reused", f"{summary['windows_restored']:,} / {summary['windows_reused']:,}", ""))
    shown = "".join(f'<div class="card {kind}"><b>{_e(f"{value:,}" if isinstance(value, int) else value)}</b>'
                    f"<span>{_e(label)}</span></div>" for label, value, kind in cards)
    left_out = [f"{summary[f'skipped_{kind}']:,} {what}" for kind, what in SKIPPED.items()
                if summary.get(f"skipped_{kind}")]
    note = f'<p class="note">Not listed as videos: {_e("; ".join(left_out))}.</p>' if left_out else ""
    return f'<section><h2>Summary</h2><div class="cards">{shown}</div>{note}</section>'


def _throughput(summary: dict[str, Any], rows: pa.Table, started: datetime, finished: datetime) -> str:
    done = rows.filter(pc.equal(rows[STATUS], DONE))
    at = done[FINISHED_AT].to_numpy(zero_copy_only=False).astype("datetime64[us]")
    seconds = (at - np.datetime64(started.astimezone(timezone.utc).replace(tzinfo=None), "us")) / np.timedelta64(1, "s")
    frames = pc.fill_null(done[FRAMES], 0).to_numpy(zero_copy_only=False)
    chart = throughput_svg(seconds, frames, (finished - started).total_seconds()) if len(done) else (
        '<p class="note">No video was restored in this run.</p>')
    return (f"<section><h2>Throughput</h2><p>{summary['frames']:,} frames in {summary['seconds']:,.1f} s: "
            f"{summary['frames_per_second']:.2f} frames/s.</p>{chart}</section>")


def _failures(rows: pa.Table) -> str:
    failed = rows.filter(pc.equal(rows[STATUS], FAILED))
    if not failed.num_rows:
        return "<section><h2>Failures</h2><p>No video failed in this run.</p></section>"
    groups = group_failures(zip(failed[REL].to_pylist(), failed[ERROR].to_pylist(), failed[PERMANENT].to_pylist()))
    shown = []
    for group, videos in groups:
        items = "".join(f"<li><code>{_e(rel)}</code>: {_e(reason)}</li>" for rel, reason in videos[:MAX_PER_GROUP])
        more = (f"<li>... and {len(videos) - MAX_PER_GROUP:,} more (the ledger's failed rows of this run)</li>"
                if len(videos) > MAX_PER_GROUP else "")
        shown.append(f'<div class="group"><h3>{_e(group.name)} <span class="count">{len(videos):,}</span></h3>'
                     f'<p class="advice">{_e(group.advice)}</p><ul>{items}{more}</ul></div>')
    return f"<section><h2>Failures by reason</h2>{''.join(shown)}</section>"


def _videos(rows: pa.Table, layout: OutputLayout) -> str:
    here = posixpath.dirname(layout.report)
    cards = []
    done = pc.equal(rows[STATUS], DONE)
    shown = pa.concat_tables([rows.filter(done), rows.filter(pc.invert(done))])  # the stills first
    for row in shown.slice(0, MAX_VIDEOS).select([REL, STATUS, OUTPUT, ERROR]).to_pylist():
        name = f"<code>{_e(row[REL])}</code>"
        if row[STATUS] == DONE:
            still = _link(_below(layout.preview(row[REL]), here))
            output = _below(row[OUTPUT] or "", layout.root)
            link = f' <a href="../{_link(output)}">output</a>' if output else ""
            cards.append(f'<figure><img src="{still}" loading="lazy" alt="before and after: {_e(row[REL])}">'
                         f"<figcaption>{name}{link}</figcaption></figure>")
        else:
            cards.append(f'<figure class="failed"><div class="reason">{_e(_shortened(row[ERROR] or row[STATUS]))}</div>'
                         f"<figcaption>{name} <span class=\"badge\">{_e(row[STATUS])}</span></figcaption></figure>")
    more = (f'<p class="note">{rows.num_rows - MAX_VIDEOS:,} more videos of this run are in the ledger '
            f"(<code>_ledger/videos/</code>).</p>" if rows.num_rows > MAX_VIDEOS else "")
    return (f"<section><h2>Videos ({rows.num_rows:,})</h2><p>Before (left) and after (right), the middle "
            f'frame of each video.</p><div class="videos">{"".join(cards)}</div>{more}</section>')


def _shortened(reason: str, most: int = 160) -> str:
    """A reason cut for a video's card (the failures section has it whole)."""
    return reason if len(reason) <= most else reason[:most - 1].rstrip() + "\u2026"


def _below(url: str, folder: str) -> str | None:
    """`url`'s path below `folder` (both URLs of one storage), or None when it is not below it."""
    return url[len(folder) + 1:] if url.startswith(folder.rstrip("/") + "/") else None


def _link(path: str) -> str:
    """A relative path as an href: each segment percent-encoded (so "#", "?", spaces and quotes stay
    part of the name), then escaped for the attribute."""
    return _e("/".join(quote(segment, safe="") for segment in path.split("/")))


def _time(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
