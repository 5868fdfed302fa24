"""Shared test fixtures: where the shared folder with parity fixtures and media lies."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
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


def audio_only(path: Path) -> None:
    """Write a file with an AAC audio stream and no video stream (a bad input for the job)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        mux_silence(out, stream, 10)


def mux_silence(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, frames: int) -> None:
    """Encode and mux `frames` frames of mono 48 kHz silence (1024 samples each), then flush."""
    for k in range(frames):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, k * 1024
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
