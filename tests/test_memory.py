"""The memory planner: longest window and largest tile that fit; explicit settings win."""

from __future__ import annotations

import pytest
import torch

from star_model.denoiser_config import OFFICIAL
from star_model.memory import estimate_bytes, plan_host, plan_memory
from star_model.padding import latent_size_ok

GiB = 2**30


def test_whole_frame_and_official_window_when_memory_allows():
    plan = plan_memory(OFFICIAL, (90, 160), 100, 80 * GiB, torch.bfloat16)
    assert plan.latent_window == 32 and plan.tile is None
    assert plan.estimated_bytes <= plan.budget_bytes


def test_large_frames_get_tiles_before_shorter_windows():
    # 1080p x2 = 2160x3840 output: latent 270x480
    plan = plan_memory(OFFICIAL, (270, 480), 100, 80 * GiB, torch.bfloat16)
    assert plan.latent_window == 32 and plan.tile is not None
    assert latent_size_ok(*plan.tile, OFFICIAL.num_downsamples)
    assert plan.estimated_bytes <= plan.budget_bytes
    assert estimate_bytes(OFFICIAL, torch.bfloat16, 32, (270, 480)) > plan.budget_bytes


def test_less_memory_gives_smaller_plans():
    big = plan_memory(OFFICIAL, (270, 480), 100, 80 * GiB, torch.bfloat16)
    small = plan_memory(OFFICIAL, (270, 480), 100, 16 * GiB, torch.bfloat16)
    assert small.estimated_bytes < big.estimated_bytes
    assert small.tile is not None and small.tile[0] * small.tile[1] <= big.tile[0] * big.tile[1]


def test_short_clips_use_their_length_as_window():
    assert plan_memory(OFFICIAL, (34, 64), 5, 80 * GiB, torch.bfloat16).latent_window == 5


def test_explicit_settings_win_even_over_budget(caplog):
    plan = plan_memory(OFFICIAL, (270, 480), 100, 1 * GiB, torch.bfloat16, latent_window=16, tile=(66, 128))
    assert (plan.latent_window, plan.tile) == (16, (66, 128))
    assert "more than" in caplog.text


def test_impossible_budget_says_what_to_do():
    with pytest.raises(ValueError, match="not enough device memory"):
        plan_memory(OFFICIAL, (270, 480), 100, 10 * 2**20, torch.bfloat16)


def test_host_plan_bounds_a_window_whatever_the_output_size():
    """32 frames: before, several float32 copies of the whole window were alive (3.0 GiB each at 1080p x2,
    12.4 GiB at 1080p x4); now one chunk of whole VAE batches (4) and decode groups (3) beside the uint8
    frames. The decode group is the floor: at 8K output one group of 3 frames is ~7 GiB of buffers."""
    for (lr, out), bound in ((((480, 854), (1920, 3416)), 3), (((1080, 1920), (2160, 3840)), 4),
                             (((1080, 1920), (4320, 7680)), 11)):
        plan = plan_host(32, lr, out, 4, 3, 64 * GiB)
        assert plan.encode_chunk % 4 == 0 and plan.decode_chunk % 3 == 0
        assert plan.estimated_bytes < bound * GiB, (out, plan.describe())
    assert plan_host(32, (1080, 1920), (4320, 7680), 4, 3, 64 * GiB).decode_chunk == 3  # one group
    assert plan_host(32, (480, 854), (1920, 3416), 4, 3, 64 * GiB, chunk=5).decode_chunk == 6
    with pytest.raises(ValueError, match="not enough host memory"):
        plan_host(32, (1080, 1920), (4320, 7680), 4, 3, 8 * GiB)
