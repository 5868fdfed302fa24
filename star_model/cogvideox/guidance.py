"""Classifier-free guidance of the CogVideoX STAR network in x̂0 space, as the official `VanillaCFG` with
`DynamicCFG` does it: one batch [uncond, cond] (uncond = an all-zero text embedding, not T5(""), since
sample_sr zeroes it), the LR latent duplicated, x̂0 = a_q·x_t − √(1−a_q²)·v̂ on the 16 noisy channels."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from star_model.cogvideox.network import CogStarNetwork


def x0_pair(network: CogStarNetwork, x_t: Tensor, t: Tensor, alpha: float, context: Tensor,
            lr_latent: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂0 uncond, x̂0 cond), each (B, C, F, H, W) float32, from one network call on the batch [uncond, cond].

    x_t and lr_latent are (B, C, F, H, W) as the windows and tiles slice them; the network takes (B, F, C, H, W).
    `context` (1, L, D) is the prompt's T5 embedding; its uncond twin is zeros of the same shape.
    """
    batch = x_t.shape[0]
    frames_first = torch.cat([x_t, x_t]).transpose(1, 2)  # (2B, F, C, H, W)
    lr = torch.cat([lr_latent, lr_latent]).transpose(1, 2).to(x_t.device)  # (2B, F, C, H, W)
    text = torch.cat([torch.zeros_like(context).expand(batch, -1, -1), context.expand(batch, -1, -1)])  # (2B, L, D)
    v = network(frames_first, lr, t.repeat(2), text).float().transpose(1, 2)  # (2B, C, F, H, W)
    x0 = alpha * torch.cat([x_t, x_t]).float() - math.sqrt(1.0 - alpha * alpha) * v
    return x0[:batch], x0[batch:]


def guide(x0_uncond: Tensor, x0_cond: Tensor, scale: float) -> Tensor:
    """x̂0_u + s·(x̂0_c − x̂0_u), with no rescale and no thresholding (official)."""
    return x0_uncond + scale * (x0_cond - x0_uncond)
