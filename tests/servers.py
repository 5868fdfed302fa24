"""Session fixtures that run real object-store servers on 127.0.0.1: moto's S3 server and
gcp-storage-emulator, each with one bucket, and point s3fs/gcsfs (and child processes) at them."""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from helpers import free_port

BUCKET = "star-test-bucket"
_START_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class ObjectStore:
    """A running test server: `url` is its bucket ("s3://star-test-bucket"); `env` the variables
    that point a client at it (already set in this process; pass them to Ray workers and jobs)."""

    url: str
    endpoint: str
    env: dict[str, str]

    def fresh(self, name: str = "t") -> str:
        """A folder no other test uses: the servers live for the whole session."""
        return f"{self.url}/{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStore]:
    _require("moto.server", "moto[server]")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",  # moto accepts any credentials; botocore wants some
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with _server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], endpoint), \
            _environment(env):
        from pipelines.storage import filesystem

        fs, path = filesystem(f"s3://{BUCKET}")
        fs.mkdir(path)  # a bare bucket name: s3fs creates the bucket
        yield ObjectStore(url=f"s3://{BUCKET}", endpoint=endpoint, env=env)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[ObjectStore]:
    _require("gcp_storage_emulator", "gcp-storage-emulator")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": endpoint,
        # Must be "false" before gcsfs is imported (pipelines.storage sets it too): otherwise gcsfs
        # asks each bucket for its type over gRPC, which the emulator never answers (60 s each).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
               "--port", str(port), "--in-memory", "--default-bucket", BUCKET]
    with _server(command, endpoint), _environment(env):
        yield ObjectStore(url=f"gs://{BUCKET}", endpoint=endpoint, env=env)


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (pip install '{package}'); bucket tests need its server")


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the test process dies, however
    it dies (a kill -9 of pytest included), so no server outlives the tests."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _server:
    """Start `command`, wait until `endpoint` answers HTTP, stop it on exit (terminate, then kill)."""

    def __init__(self, command: list[str], endpoint: str):
        self.command, self.endpoint = command, endpoint

    def __enter__(self) -> subprocess.Popen:
        # Output goes to a file, not a pipe nobody reads (a full pipe would block the server).
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        deadline = time.monotonic() + _START_SECONDS
        while True:
            if self.process.poll() is not None:
                self._fail(f"exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return self.process
            except OSError:
                if time.monotonic() > deadline:
                    self._fail(f"did not answer at {self.endpoint} within {_START_SECONDS:.0f} s")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def _fail(self, what: str) -> None:
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")[-3000:]
        self.__exit__()
        raise RuntimeError(f"test server {' '.join(self.command)} {what}; its output:\n{output}")


class _environment:
    """Set environment variables for the session and put the old values back at the end. fsspec's
    instance caches are cleared both ways, so no client built for the other endpoint is reused."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)
        _clear_fsspec_caches()

    def __exit__(self, *exc: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_fsspec_caches()


def _clear_fsspec_caches() -> None:
    import fsspec

    # Only clients already imported: importing gcsfs here could happen before its switch is set.
    for protocol, module in (("s3", "s3fs"), ("gs", "gcsfs")):
        if module in sys.modules:
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
