"""The CogVideoX-based STAR network: diffusers' `CogVideoXTransformer3DModel` (in_channels 32) with our
LIEM gates hooked into every block, called on [x_t ‖ LR latent] at any latent size: the RoPE tables are
made for the size at hand.

Weights in our layout are the diffusers keys plus `transformer_blocks.{i}.{spa_local,temp_local}.conv1.weight`
(keymap.py converts the official SAT checkpoint into it, LoRA merged).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from star_model.checkpoint import CheckpointError, compare_keys
from star_model.cogvideox.config import CogConfig
from star_model.cogvideox.liem import LiemGrid, add_liem

# SAT's final layer normalises with eps 1e-6; diffusers' norm_out takes norm_eps (1e-5, which the blocks
# need): 1.7e-5 apart on the tiny fixture, so norm_out gets the official value after construction.
FINAL_NORM_EPS = 1e-6


class CogStarNetwork(nn.Module):
    """(x_t, LR latent) (B, T, 16, H, W), DDPM timestep t (B,), T5 context (B, L, D) -> v̂ (B, T, 16, H, W)."""

    def __init__(self, cfg: CogConfig) -> None:
        super().__init__()
        from diffusers import CogVideoXTransformer3DModel  # lazily: the I2VGen-XL path never needs it

        self.cfg = cfg
        self.transformer = CogVideoXTransformer3DModel(**cfg.diffusers_kwargs())
        self.transformer.norm_out.norm.eps = FINAL_NORM_EPS
        self.liem = LiemGrid()
        add_liem(self.transformer, self.liem)
        self._rope: dict[tuple, tuple[Tensor, Tensor]] = {}

    def rope_tables(self, frames: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (frames·h·w, head_dim), of the 3D RoPE over a patch grid of frames x h x w.

        Positions are the integers 0..h-1 and 0..w-1, as SAT's tables (built for 13 x 30 x 45 and sliced)
        give at 480x720: the same tables at that size, and at any other size the positions the official
        would give if its grid were not hard-wired. (diffusers' CogVideoXPipeline instead rescales the grid
        to its 480x720 base at other sizes: not what the official does.)"""
        key = (frames, h, w, device)
        if key not in self._rope:
            from diffusers.models.embeddings import get_3d_rotary_pos_embed

            cos, sin = get_3d_rotary_pos_embed(self.cfg.head_dim, ((0, 0), (h, w)), (h, w), frames, use_real=True)
            self._rope = {key: (cos.to(device), sin.to(device))}  # one size at a time: tiles and windows share theirs
        return self._rope[key]

    def forward(self, x_t: Tensor, lr_latent: Tensor, t: Tensor, context: Tensor) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        batch, frames, _, height, width = x_t.shape
        p = self.cfg.patch
        if height % p or width % p:
            raise ValueError(f"latent {height}x{width} must be a multiple of the patch size {p}")
        grid = (frames, height // p, width // p)
        # 1. the patch grid for the LIEM hooks, and the RoPE tables for this size (5B)
        self.liem.grid = grid
        rope = self.rope_tables(*grid, x_t.device) if self.cfg.position == "rope" else None
        # 2. the official input: noisy latent first, LR latent second, along channels; in the model's
        #    dtype (the official casts x and the context to bf16 inside the network)
        inputs = torch.cat([x_t, lr_latent], dim=2).to(dtype)  # (B, T, 32, H, W)
        # 3. the DiT: t is the DDPM index as a float; the output is v̂ in the model's dtype
        try:
            return self.transformer(hidden_states=inputs, encoder_hidden_states=context.to(dtype),
                                    timestep=t.to(x_t.device), image_rotary_emb=rope, return_dict=False)[0]
        finally:
            self.liem.grid = None


def build_network(cfg: CogConfig, seed: int = 0) -> CogStarNetwork:
    """Random weights drawn from `seed` alone (every worker builds the same), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CogStarNetwork(cfg).eval()


def network_from_state(cfg: CogConfig, state: Mapping[str, Tensor], *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32, where: str = "the weights") -> CogStarNetwork:
    """A network of `cfg` holding `state` (our layout), loaded strictly: built on the meta device (no
    random init of 5.6 B parameters) and every tensor assigned, after a key and shape check."""
    with torch.device("meta"):
        network = CogStarNetwork(cfg)
    missing, unexpected, misshaped = compare_keys(network.transformer.state_dict(), state)
    if missing or unexpected or misshaped:
        raise CheckpointError(f"{where} do not fit the {cfg.name} CogVideoX STAR network: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, mis-shaped {misshaped[:5]}")
    network.transformer.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=True,
                                        assign=True)
    patch_embed = network.transformer.patch_embed
    if getattr(patch_embed, "pos_embedding", None) is not None:
        # 2B: the sin-cos table is a non-persistent buffer, still on meta; diffusers' own formula again
        sample_h, sample_w = cfg.sample_hw
        table = patch_embed._get_positional_embeddings(sample_h, sample_w, cfg.sample_frames)
        patch_embed.pos_embedding = table.to(device)
    return network.eval()

