"""Colour correction of the restored frames against the low-resolution input: AdaIN (what the official
inference always applies) and the wavelet fix (defined officially but unused)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _mean_std(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-frame per-channel mean and sqrt(unbiased var + eps) of (T, C, H, W), each (T, C, 1, 1)."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)  # (T, C, H·W)
    mean = flat.mean(-1)[..., None, None]
    # Unbiased, as the official. A one-pixel frame has no unbiased variance (the official gets NaN
    # and writes garbage); there we take the population variance, 0.
    var = flat.var(-1) if flat.shape[-1] > 1 else flat.var(-1, correction=0)
    std = (var + eps).sqrt()[..., None, None]
    return mean, std


def adain_color_fix(target_thwc: Tensor, source_tchw: Tensor) -> Tensor:
    """Re-normalises each frame's channels of the restored video to the LR input's mean and std.

    target_thwc: restored frames (T, H, W, C) in 0..255 (float). source_tchw: the LR input (T, C, h, w) in
    [-1, 1], at its own (smaller) resolution. Returns (T, H, W, C) in 0..255, clamped, float32.
    Computed in float32 as the official (bit-for-bit); float64 would move values by up to 5e-5.
    """
    target = target_thwc.float().permute(0, 3, 1, 2) / 255.0  # (T, C, H, W) in 0..1
    source = (source_tchw.float() + 1) / 2  # (T, C, h, w) in 0..1
    target_mean, target_std = _mean_std(target)
    source_mean, source_std = _mean_std(source)
    fixed = (target - target_mean) / target_std * source_std + source_mean
    return fixed.clamp(0, 1).mul(255).permute(0, 2, 3, 1)  # (T, H, W, C)


def _atrous_blur(x: Tensor, dilation: int) -> Tensor:
    """3x3 binomial blur ([1,2,1]/4 outer product) with holes `dilation` apart, replicate padding."""
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = torch.outer(kernel_1d, kernel_1d).expand(x.shape[1], 1, 3, 3)  # (C, 1, 3, 3) depthwise
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=x.shape[1], dilation=dilation)


def _wavelet_split(x: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """À-trous decomposition of (T, C, H, W): (sum of the detail bands, the final low-pass)."""
    high = torch.zeros_like(x)
    for level in range(levels):
        low = _atrous_blur(x, 2**level)
        high = high + (x - low)
        x = low
    return high, x


def wavelet_color_fix(target_thwc: Tensor, source_tchw: Tensor) -> Tensor:
    """Keeps the restored video's detail bands and takes the low-pass colour from the source.

    Same layouts and ranges as `adain_color_fix`, but the source must have the target's size (upscale
    the LR first). Returns (T, H, W, C) in 0..255, clamped, float32.
    """
    target = target_thwc.float().permute(0, 3, 1, 2) / 255.0  # (T, C, H, W)
    source = (source_tchw.float() + 1) / 2  # (T, C, H, W)
    if target.shape != source.shape:
        raise ValueError(f"wavelet colour fix needs equal sizes, got {tuple(target.shape)} and {tuple(source.shape)}")
    target_high, _ = _wavelet_split(target)
    _, source_low = _wavelet_split(source)
    return (target_high + source_low).clamp(0, 1).mul(255).permute(0, 2, 3, 1)  # (T, H, W, C)
