"""STAR's LIEM gates for the CogVideoX DiT: a spatial gate (7x7 conv over [max_c, mean_c] of each frame)
and a per-token gate (linear over the same two statistics), both applied to the AdaLN-modulated image
tokens right before attention, as the official `transformer.py` does in every layer.

They hook into diffusers' `CogVideoXBlock` from outside: a forward hook on the block's `norm1` rewrites
its first output (the modulated image tokens); the text tokens, the gates of the residual and the rest
of the block are untouched. The modules sit on the block as `spa_local` and `temp_local`, so their
weights are `transformer_blocks.{i}.spa_local.conv1.weight` (names ours; the fixture proposes them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _max_mean(tokens: Tensor) -> Tensor:
    """(..., C) -> (..., 2): [max over C, mean over C], the official channel order."""
    return torch.stack([tokens.amax(dim=-1), tokens.mean(dim=-1)], dim=-1)


class SpatialGate(nn.Module):
    """Official `SpatialAttention`: σ(Conv2d(2 -> 1, 7x7, zero padding 3, no bias)) per frame."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)

    def forward(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        frames, h, w = grid
        batch = tokens.shape[0]
        # The official rearranges the tokens to (B·T, C, h, w) first; the two statistics are the same
        # taken in token layout, so only the (B·T, 2, h, w) statistics are reshaped.
        stats = _max_mean(tokens).view(batch * frames, h, w, 2).permute(0, 3, 1, 2)  # (B·T, 2, h, w)
        gate = torch.sigmoid(self.conv1(stats))  # (B·T, 1, h, w)
        return tokens * gate.reshape(batch, frames * h * w, 1)


class TokenGate(nn.Module):
    """Official `TemporalLocalAttention`: σ(Linear(2 -> 1, no bias)) of each token's [max, mean]. Despite
    its name nothing mixes across frames (its reshape to (b h w) t c only orders the tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Linear(2, 1, bias=False)  # the official calls this linear layer conv1

    def forward(self, tokens: Tensor) -> Tensor:
        return tokens * torch.sigmoid(self.conv1(_max_mean(tokens)))  # (B, N, C) * (B, N, 1)


class LiemGrid:
    """The patch grid (latent frames, h, w) of the forward in progress, shared by every block's hook
    (the DiT sees only flattened tokens; the network sets it before each call)."""

    def __init__(self) -> None:
        self.grid: tuple[int, int, int] | None = None


def add_liem(transformer: nn.Module, grid: LiemGrid) -> None:
    """Give every block of a `CogVideoXTransformer3DModel` its two gates, applied spatial first, then
    per token (their product gates the image tokens; the residual keeps the ungated ones, as official)."""
    for block in transformer.transformer_blocks:
        block.add_module("spa_local", SpatialGate())
        block.add_module("temp_local", TokenGate())

        def gate_image_tokens(norm1: nn.Module, args: tuple, outputs: tuple, block: nn.Module = block) -> tuple:
            if grid.grid is None:
                raise RuntimeError("LIEM needs the patch grid: call the transformer through CogStarNetwork")
            image, *rest = outputs  # (B, T·h·w, C) modulated image tokens; text, gate_msa, enc_gate_msa
            image = block.temp_local(block.spa_local(image, grid.grid))
            return (image, *rest)

        block.norm1.register_forward_hook(gate_image_tokens)
