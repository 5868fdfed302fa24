"""The memory planner: longest window and largest tile that fit; explicit settings win."""

from __future__ import annotations

import pytest
import torch

from star_model.config import OFFICIAL
from star_model.memory import estimate_bytes, plan_memory
from star_model.padding import latent_size_ok

GiB = 2**30


def test_whole_frame_and_official_window_when_memory_allows():
    plan = plan_memory(OFFICIAL, (90, 160), 100, 80 * GiB, torch.bfloat16)
    assert plan.window == 32 and plan.tile is None
    assert plan.estimated_bytes <= plan.budget_bytes


def test_large_frames_get_tiles_before_shorter_windows():
    # 1080p x2 = 2160x3840 output: latent 270x480
    plan = plan_memory(OFFICIAL, (270, 480), 100, 80 * GiB, torch.bfloat16)
    assert plan.window == 32 and plan.tile is not None
    assert latent_size_ok(*plan.tile, OFFICIAL.num_downsamples)
    assert plan.estimated_bytes <= plan.budget_bytes
    assert estimate_bytes(OFFICIAL, torch.bfloat16, 32, (270, 480)) > plan.budget_bytes


def test_less_memory_gives_smaller_plans():
    big = plan_memory(OFFICIAL, (270, 480), 100, 80 * GiB, torch.bfloat16)
    small = plan_memory(OFFICIAL, (270, 480), 100, 16 * GiB, torch.bfloat16)
    assert small.estimated_bytes < big.estimated_bytes
    assert small.tile is not None and small.tile[0] * small.tile[1] <= big.tile[0] * big.tile[1]


def test_short_clips_use_their_length_as_window():
    assert plan_memory(OFFICIAL, (34, 64), 5, 80 * GiB, torch.bfloat16).window == 5


def test_explicit_settings_win_even_over_budget(caplog):
    plan = plan_memory(OFFICIAL, (270, 480), 100, 1 * GiB, torch.bfloat16, window=16, tile=(66, 128))
    assert (plan.window, plan.tile) == (16, (66, 128))
    assert "more than" in caplog.text


def test_impossible_budget_says_what_to_do():
    with pytest.raises(ValueError, match="not enough device memory"):
        plan_memory(OFFICIAL, (270, 480), 100, 10 * 2**20, torch.bfloat16)
