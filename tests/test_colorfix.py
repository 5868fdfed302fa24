"""AdaIN and wavelet colour fixes against the official fixture (shared/parity/colorfix.safetensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import parity
from star_model.colorfix import adain_color_fix, wavelet_color_fix



@pytest.mark.parametrize("name,fix", [("adain", adain_color_fix), ("wavelet", wavelet_color_fix)])
def test_matches_official(name: str, fix) -> None:
    ref = load_file(parity("colorfix.safetensors"))
    ours = fix(ref[f"{name}.target"], ref[f"{name}.source"])
    # Outputs are 0..255: the bound scales with them, as in the parity command (`compare_scaled`).
    torch.testing.assert_close(ours, ref[f"{name}.output"], atol=2e-5 * 255, rtol=0)


def test_adain_takes_the_source_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    target = 100 + 20 * torch.randn(2, 24, 32, 3, generator=gen)  # (T, H, W, C), no clamping needed
    source = 0.1 * torch.randn(2, 3, 6, 8, generator=gen) + torch.tensor([-0.2, 0.0, 0.3]).view(1, 3, 1, 1)
    fixed = adain_color_fix(target, source) / 255  # (T, H, W, C) in 0..1
    torch.testing.assert_close(fixed.mean((1, 2)), ((source + 1) / 2).mean((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std((1, 2)), ((source + 1) / 2).std((2, 3)), atol=1e-3, rtol=1e-2)
    assert fixed.shape == target.shape


def test_wavelet_keeps_detail_and_takes_low_frequencies() -> None:
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 3, 40, 48, generator=gen) * 2 - 1  # (T, C, H, W) in [-1, 1]
    target = ((frames + 1) / 2 * 255).permute(0, 2, 3, 1)  # (T, H, W, C) 0..255
    # Same image as source: the decomposition is exact, so the output is the input.
    torch.testing.assert_close(wavelet_color_fix(target, frames), target, atol=1e-3, rtol=0)
    # A flat colour shift of the source moves the output by the same shift.
    shifted = wavelet_color_fix(target * 0.5 + 60, frames)  # darker, lower-contrast target
    assert abs(float(shifted.mean() - target.mean())) < 1.0
    with pytest.raises(ValueError, match="equal sizes"):
        wavelet_color_fix(target, F.avg_pool2d(frames, 2))
