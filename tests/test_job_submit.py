"""The restore job through `ray job submit` to a `ray start --head` cluster on 127.0.0.1: the same
command as a local run, uploaded as a working_dir (so the job script must import the project without
an installation), writing to absolute local paths every node of this one-node cluster sees."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from helpers import REPO, TINY, free_port, small_archive
from pipelines.media.probe import probe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def cluster_env(temp_dir: str) -> dict[str, str]:
    """Token authentication as a real cluster has it, with this test's own token (never the shared
    ~/.ray/auth_token): the head node and `ray job submit` both read it from RAY_AUTH_TOKEN_PATH."""
    token = Path(temp_dir) / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


class HeadNode:
    """`ray start --head --block` in its own process group. Stopping it ends this cluster only:
    SIGTERM to the blocking `ray start` shuts down the processes it started (and its reaper catches
    anything left), then whatever remains of the group is killed. `ray stop --force` is not used:
    it would kill every Ray process on the machine, other people's clusters included."""

    def __init__(self, temp_dir: str):
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        command = ["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}", "--num-cpus=2",
                   "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                   # fixed defaults that another cluster on this machine may hold
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(command, env=cluster_env(temp_dir), stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ray start exited: {self.output()}"
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2):
                    return
            except urllib.error.HTTPError:  # an answer (401 without the cluster's token): it is up
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the dashboard did not answer within {timeout} s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10) if self.process.poll() is None else None
        self.log.close()


def test_job_submit_to_a_started_cluster(tmp_path):
    source = small_archive(tmp_path / "archive")
    output = tmp_path / "restored"
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = HeadNode(temp_dir)
    try:
        head.wait_ready()
        started = time.perf_counter()
        submit = subprocess.run(
            ["ray", "job", "submit", "--address", head.address, "--working-dir", str(REPO), "--",
             "python", "jobs/upscale_archive.py", "--input", str(source), "--output", str(output), *TINY],
            env=cluster_env(temp_dir), capture_output=True, text=True, timeout=240)
        print(f"ray job submit: {time.perf_counter() - started:.1f} s")
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert submit.returncode == 0 and "succeeded" in submit.stdout, submit.stdout[-4000:] + submit.stderr[-3000:]
    info = probe(output / "faces/eyes.mp4")
    assert (info.frame_count, info.width, info.height) == (16, 128, 72)
    rows = {r["rel"]: r for r in pads.dataset(output / "_ledger" / "videos").to_table().to_pylist()}
    assert {rel: r["status"] for rel, r in rows.items()} == {"faces/eyes.mp4": "done", "notes.mp4": "failed"}
    summary = json.loads((output / "_ledger" / "summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["windows_restored"]) == (1, 1, 3)
