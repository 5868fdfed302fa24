"""Shared test fixtures: the S3 and GCS test servers (servers.py), a two-node Ray cluster, the offline Hugging Face hub and the
weights folders fetched from it (offline_hub.py), the parity fixture folder, and a guard that fails a
test on an unexpected ERROR log line of ours; plain helpers several test files use are in helpers.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from torch import nn

from helpers import REPO, parity, tiny_model, two_node_cluster
from offline_hub import bucket_weights, fetched, hub  # noqa: F401 - fixtures
from servers import gcs_server, s3_server  # noqa: F401 - fixtures


@pytest.fixture
def parity_dir() -> Path:
    """../shared/parity, the folder of the official parity fixtures (a test that asks for it fails
    when it is missing)."""
    return parity("tiny_config.json").parent


@pytest.fixture
def source() -> nn.Module:
    """A tiny seeded module (Linear + GroupNorm, every value distinctive) to write checkpoints from."""
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A real two-node Ray cluster on this machine (one CPU each), this process its driver."""
    with two_node_cluster(1) as cluster:
        yield cluster


OUR_CODE = tuple(str(REPO / package) for package in ("star_model", "pipelines", "jobs"))


class _ErrorLines(logging.Handler):
    """Keeps the ERROR (and worse) records logged from this project's own code in this process."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.pathname.startswith(OUR_CODE):  # by file: jobs/ scripts log under their own names
            self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(autouse=True)
def no_unexpected_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test during which our code logged an ERROR it did not expect. A test that provokes
    one on purpose says so with `@pytest.mark.expect_errors`. (Jobs run in subprocesses or on Ray
    workers log elsewhere: their tests check exit codes and ledgers.)"""
    handler = _ErrorLines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.lines and request.node.get_closest_marker("expect_errors") is None:
        pytest.fail("unexpected ERROR log lines:\n" + "\n".join(handler.lines), pytrace=False)


@pytest.fixture(scope="module")
def local_ray():
    """A one-CPU local Ray for the tests of one module, shut down after them."""
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()
