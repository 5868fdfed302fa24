"""Shared test fixtures: the S3 and GCS test servers (servers.py), the offline Hugging Face hub and the
weights folders fetched from it (offline_hub.py), the parity fixture folder; plain helpers several test
files use are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from helpers import parity, tiny_model
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
