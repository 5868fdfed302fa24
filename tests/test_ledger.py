"""The ledger's decisions: a source is known by its content (a copied archive, `cp -r`: new modification
times, is recognised as done, not restored again; a source changed at the same size is redone; the
store's own checksum spares the read where both sides have one); a corrupt ledger file is set aside; the
same failure three runs in a row stops being retried."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from helpers import claim_all, latest_by_rel, latest_rows, read_summary, restore_run, run_here, run_job, small_archive
from pipelines.listing import SourceFile
from pipelines.restore import ledger
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.layout import OutputLayout
from pipelines.restore.lease import Leases
from pipelines.restore.outputs import missing_outputs
from pipelines.restore.plan_stage import failed_row
from pipelines.restore.rows import (CHECKSUM, CONTENT, ERROR, FINGERPRINT, OUTPUT, OUTPUT_SIZE, PERMANENT,
                                    PREVIOUS_ERROR, REL, REPEATS, SETTINGS, SOURCE, STATUS, VIDEO_ID)
from pipelines.restore.selection import recognised_rows, select

pytestmark = pytest.mark.timeout(300)


def copy_like_cp_r(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=shutil.copyfile)  # cp -r: contents copied, times not
    later = time.time() + 60
    for path in dst.rglob("*"):
        os.utime(path, (later, later))


@pytest.mark.slow
def test_an_archive_copied_with_cp_r_is_recognised_as_done(tmp_path):
    archive, output = small_archive(tmp_path / "in"), tmp_path / "out"
    first = run_job(archive, output)
    assert first.returncode == 0, first.stdout[-3000:]
    assert read_summary(output)["done"] == 1  # faces/eyes.mp4 (notes.mp4 is a bad input)

    # The runs over the copy restore nothing, so they run here: no job command, no Ray to start.
    copy_like_cp_r(archive, tmp_path / "copy")
    summary = run_here(tmp_path / "copy", output)
    assert (summary["restored"], summary["recognised_copies"]) == (0, 2), summary
    assert (summary["skipped_done"], summary["skipped_failed"]) == (1, 1)
    assert read_summary(output)["recognised_copies"] == 2  # the run wrote its summary as the job does

    summary = run_here(tmp_path / "copy", output)  # the new fingerprints are in the ledger now: nothing read
    assert (summary["restored"], summary["recognised_copies"], summary["skipped_done"]) == (0, 0, 1), summary


def row(rel: str, fingerprint: str, *, checksum: str | None = None, content: str | None = None) -> dict:
    return {REL: rel, SOURCE: f"/old/{rel}", FINGERPRINT: fingerprint, SETTINGS: "s", STATUS: "done", ERROR: None,
            PERMANENT: False, CHECKSUM: checksum, CONTENT: content}


def test_the_stores_checksum_decides_without_reading():
    sources = [SourceFile(url="gs://b/a.mp4", rel="a.mp4", size=10, version="gen2", checksum="crc32c:AAA="),
               SourceFile(url="gs://b/b.mp4", rel="b.mp4", size=10, version="gen2", checksum="crc32c:BBB=")]
    latest = latest_by_rel([row("a.mp4", "10:gen1", checksum="crc32c:AAA="),
                                   row("b.mp4", "10:gen1", checksum="crc32c:OLD=")])

    def no_reads(_sources):
        raise AssertionError("nothing should be read")

    selection = select(sources, latest, "s", digests=no_reads)
    assert [s.rel for s in selection.done] == ["a.mp4"] and [s.rel for s in selection.todo] == ["b.mp4"]
    assert [(s.rel, r[FINGERPRINT]) for s, r in selection.copied] == [("a.mp4", "10:gen1")]
    refreshed = recognised_rows(selection.copied, "run-2")
    assert (refreshed[0][FINGERPRINT], refreshed[0][SOURCE], refreshed[0]["run_id"]) == ("10:gen2", "gs://b/a.mp4",
                                                                                      "run-2")


def test_content_is_read_only_for_same_size_sources_with_a_new_fingerprint():
    sources = [SourceFile(url="/new/same.mp4", rel="same.mp4", size=10, version="2"),
               SourceFile(url="/new/edited.mp4", rel="edited.mp4", size=10, version="2"),
               SourceFile(url="/new/longer.mp4", rel="longer.mp4", size=11, version="2"),
               SourceFile(url="/new/untouched.mp4", rel="untouched.mp4", size=10, version="1")]
    latest = latest_by_rel(row(s.rel, "10:1", content=f"sha256:{s.rel}") for s in sources)
    asked = []

    def digests(unsure):
        asked.extend(s.rel for s in unsure)
        return {s.rel: "sha256:same.mp4" if s.rel == "same.mp4" else "sha256:other" for s in unsure}

    selection = select(sources, latest, "s", digests=digests)
    assert sorted(asked) == ["edited.mp4", "same.mp4"]  # not the longer one, not the untouched one
    assert sorted(s.rel for s in selection.done) == ["same.mp4", "untouched.mp4"]
    assert sorted(s.rel for s in selection.todo) == ["edited.mp4", "longer.mp4"]
    assert [s.rel for s, _ in selection.copied] == ["same.mp4"]


def test_a_corrupt_ledger_file_is_set_aside_and_the_run_starts(tmp_path, caplog):
    output = str(tmp_path / "out")
    layout = OutputLayout(output)
    good = row("a.mp4", "10:1", content="sha256:a") | {"run_id": "r1", "finished_at": ledger.now(),
                                                       "output": "/o/a.mp4"}
    ledger.write_video(layout, "va", good)
    videos = tmp_path / "out" / "_ledger" / "videos"
    (videos / "r1-vb.parquet").write_bytes(b"PAR1 cut short by a full disk")
    with caplog.at_level("WARNING"):
        rows = latest_rows(output)
    assert list(rows) == ["a.mp4"]
    assert "r1-vb.parquet cannot be read" in caplog.text
    assert (tmp_path / "out" / "_ledger" / "_corrupt" / "r1-vb.parquet").exists()
    assert [p.name for p in videos.iterdir()] == ["r1-va.parquet"]
    assert list(latest_rows(output)) == ["a.mp4"]  # and the next read is the fast one
    # a restored video whose input folder was named _ledger/videos is the user's: never read, never moved
    (videos / "clip.mp4").write_bytes(b"restored video")
    (videos / "nested").mkdir()
    (videos / "nested" / "other.mp4").write_bytes(b"restored video")
    assert list(latest_rows(output)) == ["a.mp4"]
    assert (videos / "clip.mp4").exists() and (videos / "nested" / "other.mp4").exists()


def test_the_same_failure_three_runs_in_a_row_stops_being_retried(tmp_path):
    output = str(tmp_path / "out")
    layout = OutputLayout(output)
    source = SourceFile(url="/in/a.mp4", rel="a.mp4", size=10, version="1")
    history = [row("a.mp4", "10:1") | {STATUS: "failed", ERROR: reason, REPEATS: repeats, "run_id": f"r{i}",
                                       "finished_at": ledger.now()}
               for i, (reason, repeats) in enumerate([("out of memory", 1), ("ValueError: bad shape", 1),
                                                      ("ValueError: bad shape", 2)])]
    selection = select([source], latest_by_rel(history), "s")
    assert selection.todo == [source] and selection.failed_before == {"a.mp4": ("ValueError: bad shape", 2)}

    staging = tmp_path / "out" / "_staging" / "va" / "x"
    staging.mkdir(parents=True)
    (staging / "window_00000.mkv").write_bytes(b"segment")
    window = failed_row({SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, VIDEO_ID: "va",
                         "output_stem": f"{output}/a", "staging": str(staging), PREVIOUS_ERROR: "ValueError: bad shape",
                         REPEATS: 2}, "ValueError: bad shape", permanent=False)
    run = restore_run(output, "r3")
    with Leases(run) as leases:
        claim_all(leases, [source])
        video = finish_video([window], run=run)
    assert video[PERMANENT] and "the same failure 3 runs in a row" in video[ERROR]
    assert not staging.exists()  # its segments go with it
    latest = ledger.read_state(layout)
    assert video[REPEATS] == 3
    assert select([source], latest, "s").bad == [(source, video[ERROR])]  # skipped from now on
    assert select([source], latest, "s", retry_failed=True).todo == [source]


def test_compaction_keeps_the_latest_row_per_video_in_one_file_and_the_rest_as_history(tmp_path):
    output = str(tmp_path / "out")
    layout = OutputLayout(output)
    videos, history = tmp_path / "out" / "_ledger" / "videos", tmp_path / "out" / "_ledger" / "_history"
    written = 0
    for run in range(3):  # three runs; each redoes a.mp4 and adds a video of its own
        for rel in ("a.mp4", f"new{run}.mp4"):
            ledger.write_video(layout, f"v-{rel}", row(rel, f"10:{run}") | {"run_id": f"r{run}",
                                                                           "finished_at": ledger.now()})
            written += 1
    assert len(list(videos.iterdir())) == 6
    before = latest_rows(output)

    assert ledger.compact(restore_run(output, "r2")) == {"video_files": 6, "rows": 4}
    (part,) = videos.iterdir()
    assert part.name.startswith("part-") and latest_rows(output) == before
    assert before["a.mp4"][FINGERPRINT] == "10:2"
    kept = pads.dataset(videos).to_table().num_rows  # any Parquet reader sees the current state
    replaced = pads.dataset(history).to_table().to_pylist()
    assert (kept, sorted(r[FINGERPRINT] for r in replaced)) == (4, ["10:0", "10:1"])
    assert kept + len(replaced) == written

    # Two runs that compacted at once leave the same rows twice: read once, merged by the next one.
    shutil.copy(part, videos / "part-0-other-run.parquet")
    assert latest_rows(output) == before
    ledger.compact(restore_run(output, "r3"))
    assert len(list(videos.iterdir())) == 1 and latest_rows(output) == before
    assert pads.dataset(history).to_table().num_rows == 2  # exact duplicates are not history


def test_a_deleted_or_replaced_output_is_noticed_without_listing_the_output(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    rows = []
    for rel in ("a.mp4", "b.mp4", "c.mp4"):
        (output / rel).write_bytes(b"restored")
        rows.append(row(rel, "10:1") | {OUTPUT: f"/elsewhere/{rel}", OUTPUT_SIZE: 8})  # URL from another mount
    sources = [SourceFile(url=f"/in/{r[REL]}", rel=r[REL], size=10, version="1") for r in rows]
    state = latest_by_rel(rows)
    check = missing_outputs(OutputLayout(str(output)))
    assert select(sources, state, "s", missing_outputs=check).todo == []
    (output / "b.mp4").unlink()
    (output / "c.mp4").write_bytes(b"replaced by hand")
    assert [s.rel for s in select(sources, state, "s", missing_outputs=check).todo] == ["b.mp4", "c.mp4"]

    # More done videos than a run checks: each run checks another slice, every output within a few runs.
    for rel in ("b.mp4", "c.mp4"):
        (output / rel).unlink(missing_ok=True)
    (output / "a.mp4").unlink()
    one_per_run = missing_outputs(OutputLayout(str(output)), per_run=1)
    done = np.arange(state.num_rows)
    found = [one_per_run(state, done) for _ in range(3)]
    assert sorted(rel for batch in found for rel in batch) == ["a.mp4", "b.mp4", "c.mp4"]
    assert missing_outputs(OutputLayout(str(output)), per_run=0)(state, done) == set()


def test_a_long_run_merges_its_rows_as_it_goes(tmp_path):
    output = str(tmp_path / "out")
    layout = OutputLayout(output)
    videos = tmp_path / "out" / "_ledger" / "videos"
    ledger.write_video(layout, "other", row("x.mp4", "10:1") | {"run_id": "r0", "finished_at": ledger.now()})
    for i in range(5):
        ledger.write_video(layout, f"v{i}", row(f"{i}.mp4", "10:1") | {"run_id": "r1", "finished_at": ledger.now()})
    assert ledger.merge_journals(restore_run(output, "r1")) == 5
    names = sorted(p.name for p in videos.iterdir())
    assert len(names) == 2 and names[0].startswith("part-") and "-r1-" in names[0] and names[1] == "r0-other.parquet"
    assert sorted(latest_rows(output)) == ["0.mp4", "1.mp4", "2.mp4", "3.mp4", "4.mp4", "x.mp4"]
