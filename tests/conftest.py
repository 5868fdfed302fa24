"""Shared test fixtures: where the shared folder with parity fixtures and media lies."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import gcs_server, s3_server  # noqa: F401

SHARED = Path(__file__).resolve().parents[2] / "shared"
PARITY = SHARED / "parity"
MEDIA = SHARED / "media"


@pytest.fixture
def parity_dir() -> Path:
    if not (PARITY / "tiny_config.json").exists():
        pytest.skip(f"parity fixtures not found at {PARITY}")
    return PARITY


def media(name: str) -> Path:
    """A real clip from shared/media (see its SOURCES.md); skips the test if it is not there."""
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"test clip not found at {path}")
    return path
