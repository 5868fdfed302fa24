"""A run's planning at archive scale (jobs/measure/scale.py builds the state): it decides from the
input's listing and the ledger's compacted state, checks a bounded batch of outputs, and never lists
the output tree; the closing compaction leaves one ledger file."""

from __future__ import annotations

import os

import pytest

from helpers import latest_rows, load_job
from pipelines.restore import ledger
from pipelines.restore.layout import OutputLayout
from pipelines.restore.pipeline import plan_run

pytestmark = pytest.mark.timeout(300)


def test_planning_reads_the_ledger_state_and_a_batch_of_outputs_never_the_output_tree(tmp_path, monkeypatch):
    bench = load_job("measure/scale")
    archive, output = str(tmp_path / "archive"), str(tmp_path / "restored")
    bench.build(archive, output, videos=3000, changed=20)
    job = bench.job_for(archive, output)
    job = type(job)(**{**job.__dict__, "check_outputs": 500})
    scanned, stats = [], []
    scandir, stat = os.scandir, os.stat
    monkeypatch.setattr(os, "scandir", lambda path=".": scanned.append(os.fspath(path)) or scandir(path))
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: stats.append(os.fspath(path)) or stat(path, *a, **k))

    layout = OutputLayout(output)
    sources, _, selection, run = plan_run(job, archive, layout, "r1")

    assert (len(sources), len(selection.todo), len(selection.done)) == (3000, 20, 2980)
    assert sorted(s.rel for s in selection.todo) == [bench.rel_of(i) for i in range(2980, 3000)]  # modified, new
    in_output = [path for path in scanned if path.startswith(output)]
    assert in_output == [layout.videos], in_output  # the ledger's folder, nothing else
    checked = [path for path in stats if path.startswith(output) and path.endswith(".mp4")]
    assert 400 < len(checked) < 600  # one batch of the 2980 done outputs, about 500 (a hash slot), another next run

    # The run's end: its rows, one file per video, merged with the state into one file.
    for source in selection.todo:
        ledger.write_video(layout, source.rel.replace("/", "-"), {"rel": source.rel, "status": "done",
                                                                  "fingerprint": source.fingerprint,
                                                                  "run_id": "r1", "finished_at": ledger.now()})
    monkeypatch.undo()
    assert ledger.compact(run)["rows"] == 3000
    assert len(os.listdir(layout.videos)) == 1
    state = latest_rows(output)
    assert all(state[s.rel]["fingerprint"] == s.fingerprint for s in sources)
