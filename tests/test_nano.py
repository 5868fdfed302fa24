"""The shipped nano restores a held-out clip (never trained on) through the same restorer the archive
job uses (CI-sized: 4 frames of an 88x160 crop of a face), each scale with its own network, from a
clean downscale and from one encoded with x264 at CRF 23.

What this holds it to is below what it reaches: 0.1 dB above bicubic in each case, where it reaches
+0.46 dB (x2 clean), +0.35 (x2 CRF 23), +0.29 (x4 clean) and +0.15 (x4 CRF 23) on this crop. Over the
six whole held-out clips the model card has the figures. Random v-prediction weights scored about
15 dB here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import media
from pipelines.evaluate.methods import crop_to_scale, interpolate, make_lq
from pipelines.evaluate.quality import psnr_y
from pipelines.finetune.stills import HELD_OUT
from pipelines.media.frames import read_frames
from star_model.presets import NANO_CARD, NANO_WEIGHTS, build_models, get_preset, load_restorer, restore_settings
from star_model.restore import StarRestorer

CLIP = "lq/seedvr2_Mustache_640x360.mp4"


def test_untrained_nano_restores_exactly_as_bicubic():
    """Nano predicts x̂0 as the bicubic pre-upscale plus a residual whose last layer starts at zero: a
    fresh network, through the whole restorer and codec, gives the bicubic upscale to within one level."""
    frames = read_frames(str(media(CLIP)), 0, 2)
    hr = np.ascontiguousarray(frames[:, 120:168, 200:264])
    preset = get_preset("nano")
    denoiser, text, codec = build_models(preset, None, device=torch.device("cpu"), dtype=torch.float32, fresh=True)
    for scale in (2, 4):
        lq = make_lq(hr, scale, "clean", 0)
        restored = StarRestorer(denoiser, text, codec, restore_settings("nano", scale).replace(color_fix="none"))(lq)
        assert np.abs(restored.astype(int) - interpolate(lq, scale, "bicubic")).max() <= 1


def test_the_weights_ship_small_with_their_card():
    assert sorted(NANO_WEIGHTS) == [2, 4] and all(path.is_file() for path in NANO_WEIGHTS.values())
    assert sum(path.stat().st_size for path in NANO_WEIGHTS.values()) <= 20 * 2**20
    assert NANO_CARD.is_file()


def test_each_scale_restores_with_the_weights_trained_nearest_to_it():
    nano = get_preset("nano")
    assert [nano.shipped_file(scale).name for scale in (1, 2, 3, 4, 8)] == [
        "nano-x2.safetensors", "nano-x2.safetensors", "nano-x4.safetensors", "nano-x4.safetensors",
        "nano-x4.safetensors"]


@pytest.fixture(scope="module")
def scores() -> dict[tuple[int, str], dict[str, float]]:
    """Luma PSNR of nano, bicubic and Lanczos per (scale, condition) on the crop: the clean downscale
    and the same crop area-downscaled and encoded with x264 at CRF 23 (what archives hold)."""
    assert CLIP in HELD_OUT
    frames = read_frames(str(media(CLIP)), 0, 4)
    out = {}
    for scale in (2, 4):
        hr = crop_to_scale(np.ascontiguousarray(frames[:, 120:208, 200:360]), scale)
        restorer = load_restorer("nano", config=restore_settings("nano", scale), device="cpu")
        for condition in ("clean", "crf23"):
            lq = make_lq(hr, scale, condition, 0)
            restored = restorer(lq)
            assert restored.shape == hr.shape
            out[scale, condition] = {"nano": psnr_y(restored, hr, scale), **{
                mode: psnr_y(interpolate(lq, scale, mode), hr, scale) for mode in ("bicubic", "lanczos")}}
    print(f"\nheld-out crop, luma PSNR: {out}")
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("condition", ["clean", "crf23"])
def test_nano_beats_bicubic_on_a_held_out_clip(scores, scale, condition):
    assert scores[scale, condition]["nano"] > scores[scale, condition]["bicubic"] + 0.1
