"""Convolutional building blocks of the STAR denoiser: ResBlock with its temporal convolutions,
Downsample / Upsample with the official odd padding and cropping, fp32 GroupNorm.

Attribute names reproduce the official checkpoint's keys, misspelling included (`temopral_conv`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from star_model.denoiser_config import GROUP_NORM_GROUPS


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups whose statistics are computed in fp32 whatever the input dtype.

    In bf16/fp16 the variance of wide feature maps loses precision; the official code gets fp32
    here from CUDA autocast (group_norm is on autocast's fp32 list), we do it explicitly so the
    half-precision path does not depend on autocast.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__(GROUP_NORM_GROUPS, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return super().forward(x)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class TemporalConvBlock(nn.Module):
    """Four [GroupNorm, SiLU, (Dropout), Conv3d (3,1,1)] stages on (B, C, F, H, W), one residual.

    Frames are zero-padded at both ends of the window, so the first and last frames see less context.
    """

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()

        def stage(with_dropout: bool) -> nn.Sequential:
            layers: list[nn.Module] = [GroupNorm32(channels), nn.SiLU()]
            if with_dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = stage(with_dropout=False)
        self.conv2 = stage(with_dropout=True)
        self.conv3 = stage(with_dropout=True)
        self.conv4 = stage(with_dropout=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class ResBlock(nn.Module):
    """2-D residual block conditioned on the time embedding, followed by the temporal conv block."""

    def __init__(self, in_channels: int, emb_dim: int, dropout: float, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_layers = nn.Sequential(GroupNorm32(in_channels), nn.SiLU(),
                                       nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == in_channels
                                else nn.Conv2d(in_channels, out_channels, 1))
        self.temopral_conv = TemporalConvBlock(out_channels, dropout)  # (sic): the official key

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        # x: (B*F, C, H, W); emb: (B*F, emb_dim)
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None].to(x.dtype)
        h = self.skip_connection(x) + self.out_layers(h)
        return frames_last(self.temopral_conv(frames_first(h, frames)))


class Downsample(nn.Module):
    """Stride-2 3x3 conv padded 2 rows and 1 column (official): H -> floor((H+1)/2)+1, W -> ceil(W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=(2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2, drop the first and last row (undoing Downsample's extra rows), then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")[..., 1:-1, :]
        return self.conv(x)


def frames_first(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).transpose(1, 2)


def frames_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    b, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(b * f, c, h, w)
