"""Lost work in the restore job: restore actors killed once (the run finishes and restores everything)
or every time (the run ends on its own, every video failed with a reason, the summary written), SIGTERM
(leases freed, summary written, non-zero exit), and stages past their time limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from helpers import JOB, REPO, TINY, job_env, latest_rows, media, read_summary, real_clips, shrink
from pipelines.restore import plan_stage
from pipelines.restore.faults import TimeLimit, run_with_limit, time_limit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RESTORE_ACTOR = "RestoreWindows"  # Ray names an actor's process after its class: ray::MapWorker(...RestoreWindows)


def restore_actor_pids(job_pid: int) -> list[int]:
    try:
        children = psutil.Process(job_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if RESTORE_ACTOR in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


class Killer(threading.Thread):
    """SIGKILLs restore actors of the job process (as the kernel's OOM killer would), `times` times
    at most (None: every actor, for as long as the job runs), after `delay` seconds of each's life."""

    def __init__(self, job: subprocess.Popen, times: int | None, delay: float):
        super().__init__(daemon=True)
        self.job, self.times, self.delay, self.killed = job, times, delay, 0
        self.seen: dict[int, float] = {}

    def run(self) -> None:
        while self.job.poll() is None and (self.times is None or self.killed < self.times):
            now = time.monotonic()
            for pid in restore_actor_pids(self.job.pid):
                born = self.seen.setdefault(pid, now)
                if now - born >= self.delay:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        self.killed += 1
                    except ProcessLookupError:
                        pass
                    if self.times is not None and self.killed >= self.times:
                        return
            time.sleep(0.1)


def start_job(archive: Path, output: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(JOB), "--input", str(archive), "--output", str(output), *TINY,
                             *extra], cwd=REPO, env=env or job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    real_clips(root)  # reels/dove_002.mp4 (5 windows), faces/eyes.mp4 (3 windows)
    return root


def test_an_actor_killed_mid_run_is_replaced_and_everything_restores(archive, tmp_path):
    job = start_job(archive, tmp_path)
    killer = Killer(job, times=1, delay=8.0)  # after the model is loaded, while windows are restoring
    killer.start()
    log, _ = job.communicate(timeout=280)
    killer.join()
    assert killer.killed == 1, log
    assert job.returncode == 0, log
    rows = latest_rows(tmp_path)
    assert {rel: row["status"] for rel, row in rows.items()} == {"reels/dove_002.mp4": "done",
                                                                 "faces/eyes.mp4": "done"}, log
    assert read_summary(tmp_path)["done"] == 2


@pytest.mark.timeout(600)  # three runs of the job
def test_a_poison_window_fails_its_video_alone_and_only_it_becomes_permanent(archive, tmp_path):
    """One actor, a source whose window kills the actor's process every time (poison_hook.py), and two
    good videos: the good ones finish in the first run; the poison source fails with a reason naming
    its window, and only after three runs is it permanent."""
    inputs = tmp_path / "in"
    for clip in archive.rglob("*.mp4"):
        (inputs / clip.relative_to(archive)).parent.mkdir(parents=True, exist_ok=True)
        (inputs / clip.relative_to(archive)).write_bytes(clip.read_bytes())
    shrink(media("lq/dove_002.mp4"), inputs / "bad/poison.mp4", (48, 28), 8)  # one window
    # Ray's job-submission channel for a runtime env: the hook is installed in every worker process.
    hook = json.dumps({"runtime_env": {"worker_process_setup_hook": "poison_hook.install"}})
    env = job_env(RAY_JOB_CONFIG_JSON_ENV_VAR=hook, STAR_TEST_POISON="bad/poison.mp4",
                  PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]))
    output = tmp_path / "out"
    for night in range(1, 4):
        job = subprocess.run([sys.executable, str(JOB), "--input", str(inputs), "--output", str(output), *TINY,
                              "--actors", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
        log = job.stdout + job.stderr
        assert job.returncode == 0, log
        rows = latest_rows(output)
        assert rows["reels/dove_002.mp4"]["status"] == "done" and rows["faces/eyes.mp4"]["status"] == "done", log
        poison = rows["bad/poison.mp4"]
        assert poison["status"] == "failed", log
        assert poison["error"].startswith("window 0 (frames 0-7): killed its restore actor 2 times"), poison["error"]
        assert (poison["repeats"], poison["permanent"]) == (night, night == 3), poison
        summary = read_summary(output)
        assert summary["failed"] == 1 and summary["done"] == (2 if night == 1 else 0), summary
    # the window itself is in the ledger, with its source
    windows = pq.read_table(output / "_ledger" / "_windows").to_pylist()
    assert {(w["source"], w["window"], w["status"]) for w in windows if w["source"].endswith("bad/poison.mp4")} == {
        (str(inputs / "bad/poison.mp4"), 0, "failed")}


def test_every_actor_killed_ends_the_run_with_every_video_failed(archive, tmp_path):
    # Actors are replaced for ever; a pool where none lives long enough stops at the stream's
    # no-progress limit (hours in production: Ray's own variable shortens it here).
    job = start_job(archive, tmp_path, env=job_env(RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S="30"))
    killer = Killer(job, times=None, delay=0.5)
    killer.start()
    log, _ = job.communicate(timeout=280)  # must end on its own: the retries are bounded
    killer.join()
    assert job.returncode == 0, log  # the run reached its end; the failures are in the ledger
    rows = latest_rows(tmp_path)
    assert set(rows) == {"reels/dove_002.mp4", "faces/eyes.mp4"}, log
    for row in rows.values():
        assert row["status"] == "failed" and not row["permanent"]
        assert any(reason in row["error"] for reason in ("killed its restore actor", "with its restore actor",
                                                         "restore stage stopped")), row["error"]
        assert row["repeats"] == 0 or "killed its restore actor" in row["error"], row  # the run's loss: not counted
    summary = read_summary(tmp_path)
    assert summary["failed"] == 2 and summary["done"] == 0


def test_sigterm_frees_the_leases_writes_the_summary_and_exits_non_zero(archive, tmp_path):
    job = start_job(archive, tmp_path)
    deadline = time.monotonic() + 200
    leases = tmp_path / "_ledger" / "_leases"
    # Ray is up and restoring, and the run holds a lease to free
    while not (restore_actor_pids(job.pid) and any(leases.rglob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    log, _ = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGTERM, log
    summary = read_summary(tmp_path)
    assert summary["stopped"] == "SIGTERM"
    runs = list((tmp_path / "_ledger" / "_runs").glob("*.json"))
    assert runs and all(json.loads(p.read_text())["finished"] for p in runs)  # its leases are free
    # and the next run goes on from there
    again = subprocess.run([sys.executable, str(JOB), "--input", str(archive), "--output", str(tmp_path), *TINY],
                           cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=280)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {row["status"] for row in latest_rows(tmp_path).values()} == {"done"}


def test_a_stage_past_its_time_limit_is_a_failed_row(monkeypatch, tmp_path):
    with pytest.raises(TimeLimit, match="spinning took longer than 0.2 s"), time_limit(0.2, "spinning"):
        while True:
            pass
    with time_limit(5, "quick"):  # a stage within its limit: no alarm left behind
        pass
    # a limit that grows with the work found holds while it grows, and fires once it stops
    found, started = [], time.perf_counter()
    with pytest.raises(TimeLimit, match="demuxing took longer than 0.7 s"), time_limit(
            lambda: 0.2 + 0.1 * len(found), "demuxing"):
        for _ in range(5):  # 0.3 s in steps under the base: each finds time for 0.1 s more
            found.append(1)
            time.sleep(0.06)
        while True:
            pass
    assert time.perf_counter() - started >= 0.7 and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    # a restore actor's calls run off the main thread: the limit holds there too
    outcome = []

    def actor_call():
        try:
            run_with_limit(0.2, "decoding window 3", time.sleep, 30)
        except TimeLimit as e:
            outcome.append(str(e))

    caller = threading.Thread(target=actor_call)
    caller.start()
    caller.join(timeout=5)
    assert outcome and outcome[0].startswith("decoding window 3 took longer than 0.2 s")
    assert run_with_limit(5, "quick", sum, [1, 2]) == 3

    real_clips(tmp_path)
    clip = tmp_path / "faces" / "eyes.mp4"
    def hanging_pass(*args, **kwargs):  # a decode that never ends, as on a damaged file
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(plan_stage, "read_limit", lambda size: 0.5)
    monkeypatch.setattr(plan_stage, "SCENES_SECONDS_PER_FRAME", 0.01)
    monkeypatch.setattr(plan_stage, "probe_scenes", hanging_pass)
    row = {"source": str(clip), "rel": "faces/eyes.mp4", "fingerprint": "1:1", "video_id": "v",
           "output_stem": str(tmp_path / "out" / "eyes"), "staging": ""}
    rows = plan_stage.plan_video(row, window=8, overlap=2, detector="content")
    assert [(r["status"], r["permanent"]) for r in rows] == [("failed", False)]
    assert rows[0]["error"].startswith("TimeLimit: probing and scene detection took longer than 0.5 s")
