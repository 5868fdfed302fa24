"""The shipped nano restores a held-out clip (never trained on) through the same restorer the archive
job uses (CI-sized: 4 frames of an 88x160 crop of a face).

What this holds it to is what it reaches: at x4 it is above bilinear interpolation (not yet above
bicubic: issue 11's target, missed; the model card has the figures), and at x2 it is a picture,
not noise (random weights score about 15 dB here)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import media
from pipelines.evaluate.methods import crop_to_scale, interpolate, make_lq
from pipelines.evaluate.quality import psnr_y
from pipelines.finetune.stills import HELD_OUT
from pipelines.media.frames import read_frames
from star_model.presets import NANO_WEIGHTS, load_restorer, restore_settings

CLIP = "lq/seedvr2_Mustache_640x360.mp4"


def test_the_weights_ship_small_with_their_card():
    assert NANO_WEIGHTS.is_file() and NANO_WEIGHTS.stat().st_size <= 20 * 2**20
    assert NANO_WEIGHTS.with_suffix(".md").is_file()


@pytest.fixture(scope="module")
def scores() -> dict[int, dict[str, float]]:
    assert CLIP in HELD_OUT
    frames = read_frames(str(media(CLIP)), 0, 4)
    restorer = load_restorer("nano", device="cpu")
    out = {}
    for scale in (2, 4):
        hr = crop_to_scale(np.ascontiguousarray(frames[:, 120:208, 200:360]), scale)
        lq = make_lq(hr, scale, None, 0)
        restorer.config = restore_settings("nano", scale)
        restored = restorer(lq)
        assert restored.shape == hr.shape
        out[scale] = {"nano": psnr_y(restored, hr, scale),
                      **{mode: psnr_y(interpolate(lq, scale, mode), hr, scale) for mode in ("bicubic", "bilinear")}}
    print(f"\nheld-out crop, luma PSNR: {out}")
    return out


@pytest.mark.timeout(300)
def test_nano_beats_bilinear_at_x4_on_a_held_out_clip(scores):
    assert scores[4]["nano"] > scores[4]["bilinear"]


@pytest.mark.timeout(300)
def test_nano_restores_a_picture_at_x2(scores):
    assert scores[2]["nano"] > 26.0
