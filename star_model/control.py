"""The STAR control branch (official `VideoControlNet`): a trainable copy of the UNet encoder and
middle block that reads the LR video latent and returns one zero-conv residual per skip plus one
for the middle block.

Where the official code hard-codes widths (hint conv 320 wide, middle zero-conv 4*dim wide), we
derive them from the config (dim, deepest level); for the official config the two agree.
"""

from __future__ import annotations

import torch
from torch import nn

from star_model.denoiser_config import DenoiserConfig
from star_model.diffusion import sinusoidal_embedding
from star_model.unet_parts import build_encoder, build_middle_block, build_time_embed, run_block


class ControlBranch(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
        # Registration order mirrors the official state_dict order.
        self.time_embed = build_time_embed(cfg)
        self.input_blocks, skips = build_encoder(cfg)
        self.zero_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1)) for c in skips)
        self.middle_block = build_middle_block(cfg)
        deepest = cfg.level_channels[-1]
        self.middle_block_out = nn.Sequential(nn.Conv2d(deepest, deepest, 1))
        self.input_hint_block = nn.Conv2d(cfg.in_channels, cfg.dim, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, hint: torch.Tensor,
                frames: int) -> list[torch.Tensor]:
        """x, hint: (B*F, C, H, W); t: (B,); context: (B*F, L, context_dim), already repeated per frame.

        Returns len(input_blocks) + 1 residuals: one per encoder block, then the middle block's.
        """
        # 1. own time embedding, repeated per frame
        emb = self.time_embed(sinusoidal_embedding(t, self.cfg.dim).to(x.dtype))
        emb = emb.repeat_interleave(frames, dim=0)  # (B*F, embed_dim)
        ckpt = self.gradient_checkpointing

        # 2. first block: input conv, plus the LR latent's features, then its temporal transformer
        first = self.input_blocks[0]
        h = first[0](x) + self.input_hint_block(hint)
        h = run_block(first[1:], h, emb, context, frames, ckpt)
        residuals = [self.zero_convs[0](h)]

        # 3. the rest of the encoder, a zero-conv residual after each block
        for block, zero_conv in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = run_block(block, h, emb, context, frames, ckpt)
            residuals.append(zero_conv(h))

        # 4. middle block
        for layer in self.middle_block:
            h = run_block(layer, h, emb, context, frames, ckpt)
        residuals.append(self.middle_block_out(h))
        return residuals
