"""Host memory of one restore call is bounded by the chunked streaming (pre-upscale and encode; decode,
colour fix and uint8 per chunk of frames), measured as peak RSS in a fresh process with the stand-in
networks of jobs/measure/memory.py (their activations are device memory in production)."""

from __future__ import annotations

import pytest

from helpers import load_job

pytestmark = pytest.mark.timeout(120)

GiB = 2**30
BOUND = 0.75 * GiB


@pytest.mark.slow
def test_peak_rss_of_a_window_is_bounded_by_the_host_chunks():
    # 16 frames of 240x424 at x4: one float32 copy of the window at output size is 0.29 GiB. Measured
    # growth of the peak RSS during the call (2 cores): 0.38 GiB in chunks of 3 frames (4 to encode),
    # 1.50 GiB in one chunk of 16 (no streaming), so the bound fails without the streaming.
    result = load_job("measure/memory").measure(240, 424, 4, 16, chunk=3)
    assert "stopped" not in result, result
    assert result["out"] == [16, 960, 1696, 3]
    assert result["peak"] - result["before"] < BOUND
