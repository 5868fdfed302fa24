"""No silent waits: a request the Ray this job started can never meet fails at once with what to change;
on a cluster the job logs what it waits for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest
import ray

from helpers import REPO
from pipelines import waits


@pytest.mark.slow
def test_finetune_with_more_workers_than_cpus_fails_at_once(tmp_path):
    """64 workers (65 CPUs with the pairs tasks) on a local Ray: before, the run waited for ever after a
    warning; the timeout turns that into a failure instead of a hang."""
    command = [sys.executable, "jobs/finetune.py", "--data", "examples", "--storage", str(tmp_path / "runs"),
               "--preset", "tiny", "--workers", "64", "--steps", "1", "--frames", "4", "--crop", "48x32",
               "--clips-per-video", "32"]  # 2 videos x 32 clips: enough clips for a step of 64 workers
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "fewer --workers" in done.stderr and "65 CPU" in done.stderr


@pytest.mark.slow
def test_waiting_on_a_cluster_is_reported(caplog):
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        assert waits.started_here()
        assert waits.shortfall({"CPU": 1}) == {}
        with caplog.at_level(logging.WARNING, logger="pipelines.waits"):
            with waits.waiting_lines({"CPU": 4, "GPU": 1}, "the test job", every_s=0.2):
                time.sleep(1.0)
            lines = [r.getMessage() for r in caplog.records if "waiting for resources" in r.getMessage()]
            assert len(lines) >= 2
            assert "the test job needs 4 CPU, 1 GPU and the cluster has 1 CPU, 0 GPU" in lines[0]
            caplog.clear()
            with waits.waiting_lines({"CPU": 1}, "a job that fits", every_s=0.1):
                time.sleep(0.5)
            assert not caplog.records
    finally:
        ray.shutdown()
