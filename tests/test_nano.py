"""The shipped nano restores: on a held-out clip (never trained on) it beats bicubic interpolation in
luma PSNR at x2 and x4, through the same restorer the archive job uses (CI-sized: 4 frames of a
88x160 crop). Its file is within the 20 MB the package allows."""

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


def test_the_weights_ship_small():
    assert NANO_WEIGHTS.is_file() and NANO_WEIGHTS.stat().st_size <= 20 * 2**20
    assert NANO_WEIGHTS.with_suffix(".md").is_file()  # the model card beside them


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scale", [2, 4])
def test_nano_beats_bicubic_on_a_held_out_clip(scale):
    assert CLIP in HELD_OUT
    frames = read_frames(str(media(CLIP)), 0, 4)
    hr = crop_to_scale(np.ascontiguousarray(frames[:, 120:208, 200:360]), scale)  # 88x160: a face
    lq = make_lq(hr, scale, None, 0)
    restorer = load_restorer("nano", device="cpu")
    restorer.config = restore_settings("nano", scale)
    restored = restorer(lq)
    assert restored.shape == hr.shape
    nano, bicubic = psnr_y(restored, hr, scale), psnr_y(interpolate(lq, scale, "bicubic"), hr, scale)
    print(f"\nx{scale}: nano {nano:.2f} dB, bicubic {bicubic:.2f} dB")
    assert nano > bicubic
