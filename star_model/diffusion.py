"""The v-prediction maths of STAR (forward process, velocity, x0 from v), classifier-free guidance with
rescale, and the sinusoidal timestep embedding the network uses."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """`cat[cos(t·ω_i), sin(t·ω_i)]` with ω_i = 10000^(-i/half), i < half = dim//2; (N,) -> (N, dim).

    The order is cos first, as the official code (most diffusion code puts sin first). An odd `dim`
    gets a zero column at the end. Computed in float32 whatever the dtype of `t` (int64 timesteps).
    """
    half = dim // 2
    # float64 -> float32 of the frequencies would change the last bit; the official computes the
    # `10000^(-i/half)` power in float32 on the float32 `t`, and so do we.
    t_f32 = t.to(torch.float32)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float32, device=t.device).div(half))
    angles = torch.outer(t_f32, freqs)  # (N, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (N, 2·half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)  # (N, dim)
    return emb
