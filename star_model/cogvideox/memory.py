"""Memory plan of the CogVideoX STAR sampler: the temporal window (13 latent frames, the 49 video frames
the model was trained on) and the spatial tile, so one guided forward fits the free device memory.

The estimate is analytical, as star_model/memory.py's for the UNet: the activations of one DiT block at
its peak (the residual stream of text and image tokens, the modulated copy, q, k, v, the attention
output, and the 4x-wide MLP with its GELU), for the CFG batch of two, with a 1.5x margin. Attention runs
through PyTorch SDPA, whose flash and memory-efficient kernels keep no (N x N) matrix on GPUs.
Tiles are at most the latent size the model was trained at (60x90: RoPE positions 0..29 x 0..44 per
frame, which it knows) unless set explicitly; larger frames are tiled, not extrapolated.
"""

from __future__ import annotations

import logging

import torch

from star_model.cogvideox.config import CogConfig
from star_model.memory import SAFETY, SAMPLER_LATENT_COPIES, MemoryPlan

log = logging.getLogger(__name__)

# hidden-wide tensors per token alive in a block at its peak: stream, modulated copy, q, k, v, attention
# output (6), MLP input and its 4x intermediate before and after GELU (1 + 8)
BLOCK_COPIES = 15
MIN_TILE = 16  # latent pixels (8x8 patches): below that a tile's border is most of it
GUIDANCE_BATCH = 2


def tokens(cfg: CogConfig, frames: int, tile: tuple[int, int]) -> int:
    """Sequence length of one sample: text tokens plus the image patches of a window and tile."""
    return cfg.text_length + frames * (tile[0] // cfg.patch) * (tile[1] // cfg.patch)


def estimate_bytes(cfg: CogConfig, dtype: torch.dtype, frames: int, tile: tuple[int, int]) -> int:
    element = torch.finfo(dtype).bits // 8
    return int(1.5 * GUIDANCE_BATCH * tokens(cfg, frames, tile) * BLOCK_COPIES * cfg.hidden * element)


def plan_memory(cfg: CogConfig, latent_hw: tuple[int, int], frames: int, free_bytes: int, dtype: torch.dtype, *,
                latent_window: int | None = None, tile: tuple[int, int] | None = None) -> MemoryPlan:
    """The longest window up to the config's (13), the clip's if shorter; then the largest even tile up to the
    trained latent size that fits. Explicit `latent_window` and `tile` are kept (a warning if too big)."""
    h, w = latent_hw
    # the float32 latents of the whole clip beside a forward (LR latent, noise, state, x̂0s, blend sums)
    budget = int(free_bytes * SAFETY) - SAMPLER_LATENT_COPIES * frames * cfg.latent_channels * h * w * 4
    window = latent_window or min(frames, cfg.latent_window)
    if tile is not None:
        need = estimate_bytes(cfg, dtype, window, tile)
        if need > budget:
            log.warning("explicit tile %s needs ~%.2f GiB, more than the %.2f GiB budget", tile, need / 2**30,
                        budget / 2**30)
        return MemoryPlan(window, None if tuple(tile) == (h, w) else tuple(tile), need, budget)
    for candidate in _tile_candidates(cfg, h, w):
        need = estimate_bytes(cfg, dtype, window, candidate)
        if need <= budget:
            plan = MemoryPlan(window, None if candidate == (h, w) else candidate, need, budget)
            log.info("memory plan: %s", plan.describe())
            return plan
    raise ValueError(f"not enough device memory: a {window}-frame window of {MIN_TILE}x{MIN_TILE} latent tiles "
                     f"needs ~{estimate_bytes(cfg, dtype, window, (MIN_TILE, MIN_TILE)) / 2**30:.2f} GiB and "
                     f"{budget / 2**30:.2f} GiB are available; free memory or set window/tile explicitly")


def _tile_candidates(cfg: CogConfig, h: int, w: int) -> list[tuple[int, int]]:
    """The frame capped at the trained latent size, then halving, all even (whole patches)."""
    top_h, top_w = min(h, cfg.sample_hw[0]), min(w, cfg.sample_hw[1])
    candidates = [(top_h, top_w)]
    while min(candidates[-1]) // 2 >= MIN_TILE:
        th, tw = candidates[-1]
        candidates.append((th // 2 + th // 2 % 2, tw // 2 + tw // 2 % 2))
    return candidates

