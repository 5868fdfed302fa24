"""Scheduled restoration: two runs over the same output at once never restore the same video (each
claims a video as it starts on it: the second leaves what the first holds and restores what is new), the nightly run after them
restores nothing, a retry takes over what its killed try and dead runs held, and the job's Prometheus metrics are exported by Ray with the documented names."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from helpers import (JOB, REPO, TINY, end_process_group, free_port, job_env, latest_rows, make_clip, media,
                     noisy_frames, read_summary, real_clips, run_here, shrink)
from pipelines import storage
from pipelines.restore.job import ArchiveJob
from pipelines.restore.layout import OutputLayout
from pipelines.restore.pipeline import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def start_job(archive: Path, output: Path, *extra: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(JOB), "--input", str(archive), "--output", str(output), *TINY,
                             *extra], cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=new_session)


def wait_for_claims(output: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((output / "_ledger" / "_leases").glob("*/*.json"))) >= count:
            return
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"the first run did not claim {count} videos within {timeout} s")


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def test_two_concurrent_runs_never_restore_the_same_video(tmp_path):
    archive, output = tmp_path / "archive", tmp_path / "restored"
    real_clips(archive)  # two real clips: 5 + 3 windows of TINY work
    first = start_job(archive, output)
    try:
        wait_for_claims(output, 2, first)
        # A video that arrives while the first run is going: the first run listed before it existed.
        (archive / "new").mkdir()
        make_clip(archive / "new/added.mp4", noisy_frames(4, size=(32, 24), seed=4))
        assert first.poll() is None, "the first run ended before the second started: no overlap to test"
        second = start_job(archive, output)
        second_log = finish(second)
        first_log = finish(first)
    finally:
        first.kill()

    runs = {}
    for log in (first_log, second_log):
        summary_line = next(line for line in log.splitlines() if " videos under " in line and "to restore" in line)
        runs[summary_line.split("run ", 1)[1].split(":", 1)[0]] = summary_line
    first_id, second_id = sorted(runs)  # run ids start with their UTC start time
    rows = latest_rows(output)
    assert sorted(r["rel"] for r in _all_video_rows(output)) == ["faces/eyes.mp4", "new/added.mp4", "reels/dove_002.mp4"], \
        "a video was restored twice (or not at all)"
    assert {rel: row["run_id"] for rel, row in rows.items()} == {
        "faces/eyes.mp4": first_id, "reels/dove_002.mp4": first_id, "new/added.mp4": second_id}
    assert all(row["status"] == "done" for row in rows.values())
    # The second run claimed each video as it started on it: the first run's two were held (or finished) by it.
    assert f"left to the runs that hold them or finished them: 2 by run {first_id}" in second_log

    # The nightly run after both: nothing new, nothing held any more (run here: it starts no Ray).
    summary = run_here(archive, output)
    assert (summary["restored"], summary["skipped_done"], summary["skipped_leased"]) == (0, 3, 0)


def test_a_retry_takes_over_its_killed_try_at_once_and_a_dead_runs_videos_once_they_expire(tmp_path):
    """The driver of a named run is killed once it has claimed both clips, on a head pod that is then
    lost (its heartbeat names another host; its lease time, 10 minutes, is far ahead). A third video is
    held by a dead run of another name, whose heartbeat expires in 45 s. The retry, of the same name,
    takes its killed try's videos over at once (waiting for that expiry would outlast the test), then
    restores the third once its holder expired: every video finishes, none is left to other runs."""
    archive, output = tmp_path / "archive", tmp_path / "restored"
    real_clips(archive)
    first = start_job(archive, output, "--run-name", "nightly-20261207", new_session=True)
    try:
        wait_for_claims(output, 2, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        end_process_group(first)
    layout = OutputLayout(str(output))
    (killed,) = (output / "_ledger" / "_runs").glob("*.json")
    record = json.loads(killed.read_text())
    assert not record["finished"] and record["name"] == "nightly-20261207" and record["node"]
    lost = {key: value for key, value in record.items() if key not in ("cluster", "node")}  # its cluster went too
    storage.write_bytes_atomic(str(killed), json.dumps({**lost, "host": "a-lost-head-pod/pid:[1]"}).encode())

    (archive / "new").mkdir()
    make_clip(archive / "new/added.mp4", noisy_frames(4, size=(32, 24), seed=4))
    dead = "20260101T000000Z-dead00"
    storage.write_bytes_atomic(layout.run_file(dead), json.dumps(
        {"run": dead, "name": "manual", "host": "another-pod/pid:[1]", "pid": 1,
         "started_at": "2026-01-01T00:00:00+00:00", "finished": False,
         "expires_at": (datetime.now(timezone.utc) + timedelta(seconds=45)).isoformat()}).encode())
    storage.write_bytes_atomic(f"{layout.lease_folder('new/added.mp4')}/{0:012d}.json", json.dumps(
        {"run": dead, "rel": "new/added.mp4", "at": "2026-01-01T00:00:00+00:00"}).encode())

    # The third is restored in the retry's first pass if its claim came after that expiry, else after it
    # (`_take_over`): either way, in this run.
    finish(start_job(archive, output, "--run-name", "nightly-20261207"))
    summary = read_summary(output)
    assert (summary["done"], summary["failed"], summary["skipped_leased"], summary["leased_by"]) == (3, 0, 0, [])
    assert {row["status"] for row in latest_rows(output).values()} == {"done"}


def _all_video_rows(output: Path) -> list[dict]:
    """Every video row written, the latest (videos/) and those compaction moved to _history/."""
    folders = [output / "_ledger" / name for name in ("videos", "_history") if (output / "_ledger" / name).exists()]
    return [row for folder in folders for row in pads.dataset(folder).to_table().to_pylist()]


@pytest.fixture
def ray_with_metrics():
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        ray.shutdown()


def scrape(url: str) -> dict[str, float]:
    """Our samples by name and tags ("ray_star_failures_total{permanent=true,stage=scenes}"), summed
    over the processes that recorded them."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("ray_star_"):
                continue
            tags = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                            if k in ("device", "status", "stage", "permanent", "le"))
            key = f"{sample.name}{{{tags}}}" if tags else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    return values


def test_metrics_are_exported_with_the_documented_names(ray_with_metrics, tmp_path):
    archive = tmp_path / "archive"
    shrink(media("lq/seedvr2_Eyes_212x120.mp4"), archive / "eyes.mp4", (64, 36), 16)  # 3 windows of 8, overlap 2
    (archive / "notes.mp4").write_text("not a video\n" * 20)
    summary = run(ArchiveJob(input=str(archive), output=str(tmp_path / "out"), preset="tiny", scale=2, steps=2,
                             window=8, overlap=2))
    assert (summary["done"], summary["failed"]) == (1, 1)

    expected = {
        "ray_star_videos_finished_total{status=done}": 1,
        "ray_star_videos_finished_total{status=failed}": 1,
        "ray_star_failures_total{permanent=true,stage=scenes}": 1,
        "ray_star_windows_planned_total": 3,
        "ray_star_windows_finished_total{status=done}": 3,
        "ray_star_frames_restored_total{device=cpu}": 3 * 8,  # windows [0, 8), [4, 12), [8, 16)
        "ray_star_seconds_per_frame_count{device=cpu}": 3,
        "ray_star_videos_queued": 0,
    }
    deadline = time.monotonic() + 30
    while True:
        values = scrape(ray_with_metrics)
        if all(values.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {k: values.get(k) for k in expected} == expected, sorted(values)
    assert values["ray_star_seconds_per_frame_sum{device=cpu}"] > 0
