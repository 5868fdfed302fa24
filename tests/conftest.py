"""Shared test fixtures: the S3 and GCS test servers (servers.py) and the parity fixture folder; plain
helpers several test files use are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import gcs_server, s3_server  # noqa: F401 - fixtures

from helpers import parity


@pytest.fixture
def parity_dir() -> Path:
    """../shared/parity, the folder of the official parity fixtures (a test that asks for it fails
    when it is missing)."""
    return parity("tiny_config.json").parent
