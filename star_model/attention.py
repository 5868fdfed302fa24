"""Spatial and temporal transformers of the STAR denoiser, with LIEM gates before their attentions.

Attention goes through `torch.nn.functional.scaled_dot_product_attention`. The official code calls
xformers' memory-efficient attention (softmax(q k^T / sqrt(d)) v, no bias, no dropout), which is
the same maths; SDPA picks flash / memory-efficient kernels on GPUs and runs everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from star_model.blocks import GroupNorm32
from star_model.liem import SpatialLIEM, TemporalLIEM

# CUDA's fused attention kernels put the batch on a grid dimension of at most 65,535 blocks; beyond it
# they fail to launch or PyTorch falls back to the math kernel (memory quadratic in the tokens).
# Temporal attention has one batch row per latent pixel (209,088 at 480p x4), so larger batches are
# cut into slices of this many rows: rows are independent, the numbers are the same.
KERNEL_MAX_BATCH = 65535


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v (SDPA's default scale, as xformers) on (B, heads, N, d), in slices of
    at most KERNEL_MAX_BATCH batch rows."""
    if q.shape[0] <= KERNEL_MAX_BATCH:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat([F.scaled_dot_product_attention(*(t[i:i + KERNEL_MAX_BATCH] for t in (q, k, v)))
                      for i in range(0, q.shape[0], KERNEL_MAX_BATCH)])


class Attention(nn.Module):
    """Multi-head attention; q/k/v without bias, output projection with bias (official layout)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))  # Sequential: official key `to_out.0`

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        # (B, N, heads*d) -> (B, heads, N, d)
        q, k, v = (proj(src).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for proj, src in ((self.to_q, x), (self.to_k, context), (self.to_v, context)))
        out = attend(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)  # exact (erf) GELU, as the official


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # The Identity holds the place of the official (p=0) dropout so the keys stay `net.0` / `net.2`.
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, second attention, GEGLU MLP, each pre-normed with a residual.

    Spatial blocks cross-attend the text in attn2 and gate attn1's input with a 2-D LIEM (`local1`).
    Temporal blocks are self-attention only (the official `only_self_att`: attn2 ignores the text)
    and gate both attentions' inputs with 1-D LIEMs (`local1`, `local2`). The gated tensor only feeds
    the attention; the residual adds the ungated one (paper Eq. 4).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None, temporal: bool) -> None:
        super().__init__()
        self.temporal = temporal
        # Module order mirrors the official state_dict order.
        self.attn1 = Attention(dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=None if temporal else context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        if temporal:
            self.local1 = TemporalLIEM()
            self.local2 = TemporalLIEM()
        else:
            self.local1 = SpatialLIEM()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                height: int = 0, width: int = 0) -> torch.Tensor:
        if self.temporal:
            # x: (B*H*W, F, C)
            x = self.attn1(self.norm1(self.local1(x))) + x
            x = self.attn2(self.norm2(self.local2(x))) + x
        else:
            # x: (B*F, H*W, C); context: (B*F, L, context_dim)
            x = self.attn1(self.norm1(self.local1(x, height, width))) + x
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the H*W tokens; Linear proj_in/proj_out (official use_linear=True)."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, depth: int = 1) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm32(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, temporal=False) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: (B*F, C, H, W) -> tokens (B*F, H*W, C)
        bf, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, h, w)
        return self.proj_out(tokens).transpose(1, 2).reshape(bf, c, h, w) + x


class TemporalTransformer(nn.Module):
    """Per-pixel transformer over the F frames; Conv1d (k=1) proj_in/proj_out (official use_linear=False).

    There is no temporal position encoding; frame order reaches the network only through the
    ResBlocks' temporal convolutions (as in the official model).
    """

    def __init__(self, channels: int, heads: int, head_dim: int, depth: int = 1) -> None:
        super().__init__()
        inner = heads * head_dim
        self.norm = GroupNorm32(channels, eps=1e-6)
        self.proj_in = nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, None, temporal=True) for _ in range(depth))
        self.proj_out = nn.Conv1d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, F, H, W); GroupNorm statistics span all frames, as the official
        b, c, f, h, w = x.shape
        seq = self.norm(x).permute(0, 3, 4, 1, 2).reshape(b * h * w, c, f)  # (B*H*W, C, F)
        tokens = self.proj_in(seq).transpose(1, 2)  # (B*H*W, F, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        seq = self.proj_out(tokens.transpose(1, 2))  # (B*H*W, C, F)
        return seq.reshape(b, h, w, c, f).permute(0, 3, 4, 1, 2) + x
