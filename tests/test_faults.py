"""Lost work in the restore job: restore actors killed once (the run finishes and restores everything)
or every time (the run ends on its own, every video failed with a reason, the summary written), and
SIGTERM (leases freed, summary written, non-zero exit)."""

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
import pytest

from helpers import JOB, REPO, TINY, job_env, latest_rows, read_summary, real_clips

pytestmark = pytest.mark.timeout(300)

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


def start_job(archive: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(JOB), "--input", str(archive), "--output", str(output), *TINY,
                             *extra], cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def test_every_actor_killed_ends_the_run_with_every_video_failed(archive, tmp_path):
    job = start_job(archive, tmp_path)
    killer = Killer(job, times=None, delay=0.5)
    killer.start()
    log, _ = job.communicate(timeout=280)  # must end on its own: the retries are bounded
    killer.join()
    assert job.returncode == 0, log  # the run reached its end; the failures are in the ledger
    rows = latest_rows(tmp_path)
    assert set(rows) == {"reels/dove_002.mp4", "faces/eyes.mp4"}, log
    for row in rows.values():
        assert row["status"] == "failed" and not row["permanent"]
        assert "restore actor died" in row["error"] or "restore stage stopped" in row["error"], row["error"]
    summary = read_summary(tmp_path)
    assert summary["failed"] == 2 and summary["done"] == 0


def test_sigterm_frees_the_leases_writes_the_summary_and_exits_non_zero(archive, tmp_path):
    job = start_job(archive, tmp_path)
    deadline = time.monotonic() + 200
    while not restore_actor_pids(job.pid) and time.monotonic() < deadline:  # Ray is up and restoring
        time.sleep(0.2)
    time.sleep(2)
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
