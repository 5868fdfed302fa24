"""The CogVideoX STAR around its network: the sampler's tables, the restorer at any size and frame count
with windows and tiles, its memory plan, its presets and weights folder, and the restore job end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import read_summary, run_job, small_archive
from star_model.cogvideox.components import tiny_t5, tiny_vae
from star_model.cogvideox.config import FIVE_B, TINY
from star_model.cogvideox.memory import plan_memory
from star_model.cogvideox.network import build_network
from star_model.cogvideox.restore import CogRestorer
from star_model.cogvideox.sampler import denoiser_table, dynamic_cfg_scale, sampler_steps
from star_model.presets import get_preset, load_restorer, restore_settings
from star_model.tiles import plan_tiles
from star_model.weights_folder import missing_weights

GiB = 2**30


def test_the_schedule_is_zero_terminal_snr_and_the_steps_trailing():
    table = denoiser_table()
    assert table[-1] == 0 and 0.99 < table[0] < 1 and bool((table[1:] < table[:-1]).all())
    steps = sampler_steps(50)
    assert steps.timesteps[:3] == [999, 979, 959] and steps.timesteps[-1] == 19
    assert steps.alphas[0] == 0 and steps.alphas[-1] > table[19]  # rescaled over the subsample: above the 1000-table
    assert dynamic_cfg_scale(6.0, 999, 50) == pytest.approx(2.2914871745)  # the official quirk, not a ramp
    with pytest.raises(ValueError, match="steps=1"):
        sampler_steps(1)


@pytest.fixture(scope="module")
def restorer():
    config = restore_settings("cogvideox-tiny", 2, 2)
    return CogRestorer(build_network(TINY), tiny_t5(TINY), tiny_vae(TINY), config)


def test_any_size_and_frame_count_restores_and_tiles_and_windows_blend(restorer):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 18, 26, 3), dtype=np.uint8)  # 6 frames (not 1 + 4k), 36x52 output
    whole = restorer(frames, "a prompt", seed=3)
    assert whole.shape == (6, 36, 52, 3) and whole.dtype == np.uint8
    assert restorer.last_plan.tile is None and restorer.last_plan.latent_window == 3  # padded to 9 frames: 3 latent
    np.testing.assert_array_equal(restorer(frames, "a prompt", seed=3), whole)  # seeded
    tiled = CogRestorer(restorer.network, restorer.text, restorer.vae,
                        restorer.config.replace(tile=(4, 4), tile_overlap=2, window=2))
    out = tiled(frames, "a prompt", seed=3)
    assert out.shape == whole.shape and tiled.last_plan.tile == (4, 4)
    assert not np.array_equal(out, whole)  # tiles of other sizes see other neighbourhoods
    deep = restorer(frames.astype(np.uint16) * 257, "a prompt", seed=3)
    assert deep.dtype == np.uint16 and deep.shape == whole.shape


def test_settings_the_sampler_cannot_take_fail_early():
    preset = get_preset("cogvideox")
    for bad in (dict(guide_rescale=0.2), dict(solver_mode="fast"), dict(padding="official"), dict(steps=1)):
        with pytest.raises(ValueError, match="cogvideox preset cannot restore"):
            preset.restore_config(**bad)
    with pytest.raises(ValueError, match="odd|even"):
        CogRestorer(build_network(TINY), tiny_t5(TINY), tiny_vae(TINY),
                    restore_settings("cogvideox-tiny", 2, 2).replace(tile=(3, 4)))(np.zeros((1, 8, 8, 3), np.uint8))


def test_the_plan_tiles_large_frames_at_the_trained_latent_size():
    small = plan_memory(FIVE_B, (60, 90), 13, 40 * GiB, torch.bfloat16)
    assert small.tile is None and small.latent_window == 13
    uhd = plan_memory(FIVE_B, (136, 240), 20, 40 * GiB, torch.bfloat16)  # 1080p, padded to 1088
    assert uhd.tile == (60, 90) and uhd.latent_window == 13 and len(plan_tiles(136, 240, 60, 90, 16)) == 3 * 4
    tight = plan_memory(FIVE_B, (136, 240), 13, 4 * GiB, torch.bfloat16)
    assert tight.tile[0] < 60 and tight.estimated_bytes <= tight.budget_bytes
    with pytest.raises(ValueError, match="not enough device memory"):
        plan_memory(FIVE_B, (136, 240), 13, GiB // 8, torch.bfloat16)


def test_the_presets_and_their_weights_folder():
    assert get_preset("cogvideox").variant == "cogvideox" and get_preset("official").variant == "i2vgen"
    with pytest.raises(ValueError, match="text_encoder/, tokenizer/ and vae/"):
        load_restorer("cogvideox")
    missing = missing_weights({"star/cogvideox.safetensors", "vae/config.json"}, None, "cogvideox")
    assert [line.split(":")[0] for line in missing] == ["no T5 text encoder", "no T5 tokenizer", "no VAE"]
    assert restore_settings("cogvideox", 4).steps == 50 and restore_settings("cogvideox", 4).guide_scale == 6.0


@pytest.mark.slow
def test_the_restore_job_runs_the_tiny_cogvideox_end_to_end(tmp_path):
    archive = small_archive(tmp_path / "in")
    result = run_job(archive, tmp_path / "out", "--preset", "cogvideox-tiny")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(tmp_path / "out")
    assert summary["done"] == 1 and (tmp_path / "out" / "faces" / "eyes.mp4").stat().st_size > 0
    assert "preset 'cogvideox-tiny' has RANDOM weights" in result.stdout + result.stderr
