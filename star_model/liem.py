"""Local Information Enhancement Modules (LIEM, paper Sec. 3.2): sigmoid gates computed from the
per-position channel max and mean, applied to the tokens that feed an attention layer.

Key names and shapes follow the official checkpoint (`local1.conv1.weight`), including the temporal
gate's `conv1`, which is a Linear(2 -> 1) despite its name.
"""

from __future__ import annotations

import torch
from torch import nn


def _max_mean(x: torch.Tensor, dim: int) -> torch.Tensor:
    # The official order is [max, mean]; swapping them silently transposes the learned 2-channel kernel.
    return torch.cat([x.amax(dim=dim, keepdim=True), x.mean(dim=dim, keepdim=True)], dim=dim)


class SpatialLIEM(nn.Module):
    """Gate tokens of one frame by a 7x7 conv over [channel max, channel mean] (CBAM's spatial branch).

    The paper writes a 3x3 conv; the released checkpoints hold 7x7 kernels, which we follow.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # tokens: (B*F, H*W, C) -> image (B*F, C, H, W) for the conv, gate, back to tokens
        bf, hw, c = tokens.shape
        image = tokens.transpose(1, 2).reshape(bf, c, height, width)
        gate = torch.sigmoid(self.conv1(_max_mean(image, dim=1)))  # (B*F, 1, H, W)
        return (image * gate).reshape(bf, c, hw).transpose(1, 2)


class TemporalLIEM(nn.Module):
    """Gate each frame's token of a pixel's time series by Linear(2 -> 1) over [channel max, mean]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Linear(2, 1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B*H*W, F, C); gate: (B*H*W, F, 1)
        gate = torch.sigmoid(self.conv1(_max_mean(tokens, dim=-1)))
        return tokens * gate
