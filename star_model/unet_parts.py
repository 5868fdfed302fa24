"""The parts the UNet and the control branch share: time embedding, encoder blocks, middle block,
and the function that runs one block on flattened frames.

Both STAR modules build these with the same constructor values, so their keys and shapes are equal
(`input_blocks.*` vs `VideoControlNet.input_blocks.*`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from star_model.attention import SpatialTransformer, TemporalTransformer
from star_model.blocks import Downsample, ResBlock, frames_first, frames_last
from star_model.denoiser_config import DenoiserConfig


def build_time_embed(cfg: DenoiserConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.dim, cfg.embed_dim), nn.SiLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim))


def attention_layers(cfg: DenoiserConfig, channels: int) -> list[nn.Module]:
    """A spatial transformer (text cross-attention) and, if enabled, a temporal one at this width."""
    heads = channels // cfg.head_dim
    layers: list[nn.Module] = [SpatialTransformer(channels, heads, cfg.head_dim, cfg.context_dim)]
    if cfg.temporal_attention:
        layers.append(TemporalTransformer(channels, heads, cfg.head_dim, cfg.temporal_depth))
    return layers


def build_encoder(cfg: DenoiserConfig) -> tuple[nn.ModuleList, list[int]]:
    """Encoder blocks and the channel count of each block's output (the skips, in order).

    Block 0 is the input conv plus a temporal transformer whose inner width is
    num_heads * head_dim (512 vs 320 channels officially); then per level num_res_blocks
    [ResBlock | ST | TT] blocks (attention only at scales in attn_scales) and a Downsample between levels.
    """
    blocks = nn.ModuleList()
    first: list[nn.Module] = [nn.Conv2d(cfg.in_channels, cfg.dim, 3, padding=1)]
    if cfg.temporal_attention:
        first.append(TemporalTransformer(cfg.dim, cfg.num_heads, cfg.head_dim, cfg.temporal_depth))
    blocks.append(nn.ModuleList(first))
    skips = [cfg.dim]
    scale, channels = 1.0, cfg.dim
    for level, out_channels in enumerate(cfg.level_channels):
        for _ in range(cfg.num_res_blocks):
            layers: list[nn.Module] = [ResBlock(channels, cfg.embed_dim, cfg.dropout, out_channels)]
            if scale in cfg.attn_scales:
                layers += attention_layers(cfg, out_channels)
            blocks.append(nn.ModuleList(layers))
            skips.append(out_channels)
            channels = out_channels
        if level < cfg.num_downsamples:
            blocks.append(Downsample(channels))  # not wrapped: the official key is `input_blocks.N.op`
            skips.append(channels)
            scale /= 2
    return blocks, skips


def build_middle_block(cfg: DenoiserConfig) -> nn.ModuleList:
    """ResBlock, transformers, ResBlock at the deepest level (attention here whatever attn_scales says)."""
    channels = cfg.level_channels[-1]
    return nn.ModuleList([ResBlock(channels, cfg.embed_dim, cfg.dropout), *attention_layers(cfg, channels),
                          ResBlock(channels, cfg.embed_dim, cfg.dropout)])


def run_layer(layer: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
              frames: int) -> torch.Tensor:
    """Apply one layer to x (B*F, C, H, W); temporal layers see (B, C, F, H, W)."""
    if isinstance(layer, ResBlock):
        return layer(x, emb, frames)
    if isinstance(layer, SpatialTransformer):
        return layer(x, context)
    if isinstance(layer, TemporalTransformer):
        return frames_last(layer(frames_first(x, frames)))
    return layer(x)


def _run_layers(block: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                frames: int) -> torch.Tensor:
    for layer in (block if isinstance(block, nn.ModuleList) else [block]):
        x = run_layer(layer, x, emb, context, frames)
    return x


def run_block(block: nn.Module, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, frames: int,
              checkpointed: bool = False) -> torch.Tensor:
    """Run a block; with `checkpointed` its activations are recomputed in backward instead of stored."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(_run_layers, block, x, emb, context, frames, use_reentrant=False)
    return _run_layers(block, x, emb, context, frames)
