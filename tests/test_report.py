"""The run's report page (pipelines/restore/report.py) from made-up rows: escaping, relative links only,
failures grouped with what to do, the cap on videos shown, the throughput chart, and that a failure
to write it never fails the run."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import numpy as np
import pytest

from pipelines import storage
from pipelines.restore import ledger, report
from pipelines.restore.failure_groups import GROUPS, group_failures
from pipelines.restore.faults import lost_windows
from pipelines.restore.layout import OutputLayout
from pipelines.restore.plan_stage import UNREADABLE_REASON
from pipelines.restore.rows import DONE, FAILED
from pipelines.restore.summary import RunStats
from pipelines.restore.throughput_chart import nice_ticks, throughput_svg
from pipelines.restore.window_attempts import KILLED_REASON

STARTED = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
EVIL = 'odd/<script>alert("x")</script> & #1?.mp4'


def row(root: str, rel: str, status: str = DONE, error: str | None = None, *, permanent: bool = False,
        minute: int = 1, frames: int = 100, run_id: str = "run1") -> dict:
    stem = rel.rsplit(".", 1)[0]
    return {"source": f"/archive/{rel}", "rel": rel, "status": status, "error": error, "permanent": permanent,
            "output": storage.join(root, f"{stem}.mp4") if status == DONE else None, "frames": frames,
            "windows": 2, "windows_reused": 0, "restore_seconds": 3.0, "device": "cpu", "run_id": run_id,
            "finished_at": STARTED + timedelta(minutes=minute)}


def summary_of(rows: list[dict], root: str, **fields) -> dict:
    stats = RunStats(len(rows))
    for video in rows:
        stats.add(video)
    return stats.summary(**{"run_id": "run1", "input": "/archive", "output": root, "listed": len(rows) + 3,
                            "skipped_done": 3, "skipped_failed": 0, "recognised_copies": 0, "warning": None,
                            "started_at": STARTED, "finished_at": STARTED + timedelta(minutes=10),
                            "stopped": None, **fields})


def page(rows: list[dict], root: str = "gs://bucket/restored", **fields) -> str:
    return report.render(summary_of(rows, root, **fields), ledger._table(rows, ledger.VIDEO_SCHEMA),
                         OutputLayout(root))


class Links(HTMLParser):
    """Every href and src of a page, and the tags it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [value for name, value in attrs if name in ("href", "src") and value is not None]


def links_of(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


@pytest.mark.parametrize("root", ["gs://bucket/restored", "/srv/restored", "s3://b/deep/out"])
def test_links_are_relative_and_quoted(root):
    rows = [row(root, "a b/c#1.mp4"), row(root, "top.mov", minute=2), row(root, "bad.mp4", FAILED, "boom")]
    found = links_of(page(rows, root))
    assert found.links == ["_previews/a%20b/c%231.png", "../a%20b/c%231.mp4", "_previews/top.png", "../top.mp4"]
    assert not [link for link in found.links if link.startswith("/") or ":" in link]
    assert "script" not in found.tags and "link" not in found.tags  # self-contained, nothing to run


def test_names_and_reasons_are_escaped():
    root = "/srv/out"
    rows = [row(root, EVIL), row(root, "x.mp4", FAILED, '<img src="http://evil/x.png"> failed', permanent=True)]
    html = page(rows, root, warning="the <u>tiny</u> preset")
    found = links_of(html)
    assert found.tags.isdisjoint({"script", "u"}) and "http://evil/x.png" not in found.links
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; #1?.mp4" in html
    assert "&lt;img src=&quot;http://evil/x.png&quot;&gt; failed" in html
    assert "_previews/odd/%3Cscript%3Ealert%28%22x%22%29%3C/script%3E%20%26%20%231%3F.png" in found.links
    assert "the &lt;u&gt;tiny&lt;/u&gt; preset" in html  # the warning, shown


def test_failures_are_grouped_with_what_to_do():
    reasons = {
        "out of GPU memory": ("window 0 (frames 0-31): out of GPU memory (CUDA OOM); set a smaller window or tile",
                              False),
        "a window killed its actor": (f"window 2 (frames 48-79): {KILLED_REASON}", False),
        "lost with a node or actor": (lost_windows(4, [0, 1]), False),
        "bad input (permanent)": (UNREADABLE_REASON.format("InvalidDataError: moov atom not found"), True),
        "lease: another run": ("run r1 lost the lease of a.mp4 to r2 (it stalled past the lease time); that "
                               "run restores it", False),
        "output names clash": ("output name clashes with b.mov (same name, other extension or case, or a name "
                               "that is not UTF-8, escaped); rename one of them", False),
        "assembly": ("assembly: RuntimeError: muxer said no", False),
        "storage or time limit (transient)": ("OSError: [Errno 5] Input/output error", False),
        "given up: the same failure run after run": ("ValueError: x (the same failure 3 runs in a row on the "
                                                     "unchanged source: no longer retried; --retry-failed ...)", True),
        "other": ("ZeroDivisionError: division by zero", False),
    }
    failures = [(f"{name}.mp4", reason, permanent) for name, (reason, permanent) in reasons.items()]
    failures.append(("second oom.mp4", reasons["out of GPU memory"][0], False))
    groups = group_failures(failures)
    assert {group.name: [rel for rel, _ in videos] for group, videos in groups} == {
        name: [f"{name}.mp4"] + (["second oom.mp4"] if name == "out of GPU memory" else []) for name in reasons}
    assert groups[0][0].name == "out of GPU memory"  # the largest group first
    assert {g.name for g in GROUPS} == set(reasons)  # every group is reachable

    html = page([row("/o", rel, FAILED, reason, permanent=p) for rel, reason, p in failures], "/o")
    for group in GROUPS:
        assert report._e(group.advice) in html
    assert "--window" in html and "ffmpeg -i SOURCE -c copy OUT.mkv" in html


def test_videos_beyond_the_cap_are_counted_not_shown(monkeypatch):
    monkeypatch.setattr(report, "MAX_VIDEOS", 3)
    failed = row("/o", "a.mp4", FAILED, "boom")  # first by name, shown after the stills
    html = page([failed] + [row("/o", f"v{i}.mp4", minute=i) for i in range(5)], "/o")
    assert len(re.findall(r'<img [^>]*loading="lazy"', html)) == 3 and '<figure class="failed">' not in html
    assert "3 more videos of this run are in the ledger" in html


def test_the_chart_climbs_to_the_frames_restored():
    svg = throughput_svg(np.array([120.0, 30.0, 400.0]), np.array([50, 25, 100]), 600.0)
    points = [tuple(map(float, p.split(","))) for p in re.search(r'<polyline points="([^"]+)"', svg)[1].split()]
    ys = [y for _, y in points]
    assert ys == sorted(ys, reverse=True) and ys[0] > ys[-1]  # frames only grow (y grows downwards)
    assert nice_ticks(175) == [0, 50, 100, 150, 200] and nice_ticks(600)[-1] >= 600
    assert "<script" not in svg


def test_a_run_with_nothing_restored_says_so():
    html = page([], "/o")
    assert "No video was restored in this run." in html and "No video failed in this run." in html


def test_written_at_the_end_of_a_run_from_this_runs_rows(tmp_path, monkeypatch, caplog):
    layout = OutputLayout(str(tmp_path / "out"))
    mine, other = row(layout.root, "mine.mp4"), row(layout.root, "theirs.mp4", run_id="run0")
    ledger.write_videos(layout, "run1-a", [mine])
    ledger.write_videos(layout, "run0-a", [other])
    report.write_report(layout, summary_of([mine], layout.root))
    html = (tmp_path / "out/_ledger/report.html").read_text()
    assert "mine.mp4" in html and "theirs.mp4" not in html

    def fail(*_args):
        raise OSError("bucket says no")

    monkeypatch.setattr(storage, "write_bytes_atomic", fail)
    with caplog.at_level(logging.WARNING):
        report.write_report(layout, summary_of([mine], layout.root))  # no exception: a warning
    assert "could not write the run's report page" in caplog.text
