"""Configs of the CogVideoX-based STAR network and of what goes with it (text length, VAE scale, SNR
shift), the released sizes (5B, 2B) and a tiny random one for tests, and the choice among them from a
checkpoint's tensor shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

Position = Literal["rope", "sincos"]  # 3D RoPE on image tokens (5B) or a fixed 3D sin-cos table added (2B)


@dataclass(frozen=True)
class CogConfig:
    """Sizes of the DiT and the constants of its sampler. Defaults are the 5B of the official
    `cogvideox_5b_infer_sr.yaml`."""

    name: str = "5b"
    num_layers: int = 42
    num_heads: int = 48
    head_dim: int = 64
    text_dim: int = 4096  # T5-XXL width
    text_length: int = 226  # prompts are padded or cut to this many T5 tokens (official and diffusers)
    time_embed_dim: int = 512
    position: Position = "rope"
    latent_channels: int = 16  # the network sees 2x this: [x_t ‖ LR latent]
    patch: int = 2
    # diffusers builds its sin-cos table (2B) for this latent size and recomputes it for any other one;
    # RoPE tables (5B) are ours, made for the size at hand (network.rope_tables)
    sample_hw: tuple[int, int] = (60, 90)
    sample_frames: int = 49
    vae_scaling: float = 0.7  # latents = VAE(x)·scale (official yaml scale_factor)
    snr_shift: float = 1.0  # ZeroSNRDDPMDiscretization shift_scale
    latent_window: int = 13  # latent frames per temporal window: the RoPE table of 49 frames the model knows

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_heads", "head_dim", "text_dim", "text_length", "time_embed_dim",
                      "latent_window"):
            if getattr(self, field) < 1:
                raise ValueError(f"CogConfig.{field}={getattr(self, field)} must be >= 1")
        if self.position not in ("rope", "sincos"):
            raise ValueError(f"CogConfig.position={self.position!r}; choose 'rope' or 'sincos'")
        if self.position == "rope" and self.head_dim % 8:
            # get_3d_rotary_pos_embed splits the head into t/h/w = 1/4, 3/8, 3/8, each of even width
            raise ValueError(f"CogConfig.head_dim={self.head_dim} must be a multiple of 8 for 3D RoPE")

    @property
    def hidden(self) -> int:
        return self.num_heads * self.head_dim

    def diffusers_kwargs(self) -> dict:
        """Arguments of diffusers' `CogVideoXTransformer3DModel` for this network (in_channels 32:
        STAR's `proj_sr` takes the LR latent beside x_t)."""
        return dict(num_attention_heads=self.num_heads, attention_head_dim=self.head_dim,
                    in_channels=2 * self.latent_channels, out_channels=self.latent_channels,
                    time_embed_dim=self.time_embed_dim, text_embed_dim=self.text_dim, num_layers=self.num_layers,
                    sample_height=self.sample_hw[0], sample_width=self.sample_hw[1],
                    sample_frames=self.sample_frames, patch_size=self.patch, max_text_seq_length=self.text_length,
                    use_rotary_positional_embeddings=self.position == "rope",
                    use_learned_positional_embeddings=False)


FIVE_B = CogConfig()
# The CogVideoX-2B layout (THUDM sat/configs/cogvideox_2b.yaml): 30 layers of 1920, absolute sin-cos
# positions, VAE scale 1.15258426, SNR shift 3.0. STAR's own 2B config is not published; these are the
# base model's values, which a STAR fine-tune of it would keep (reference §7, inferred).
TWO_B = CogConfig(name="2b", num_layers=30, num_heads=30, position="sincos", vae_scaling=1.15258426, snr_shift=3.0)
# Random weights for tests, the sizes of the parity fixture (shared/parity_cogvideox/tiny_config.json).
TINY = CogConfig(name="tiny", num_layers=2, num_heads=2, head_dim=32, text_dim=40, text_length=6,
                 time_embed_dim=48, sample_hw=(8, 12), sample_frames=13, latent_window=4)
RELEASED = (FIVE_B, TWO_B)
KNOWN = (*RELEASED, TINY)  # sizes config_from_shapes recognises


def config_from_shapes(state: Mapping[str, torch.Tensor], position: Position) -> CogConfig:
    """The config of a network in our key layout (network.py) from its tensor shapes: a known size
    when the shapes are one (5B, 2B or tiny), else a config of those shapes with the
    5B's constants (tiny test networks). `position` is not in the shapes of our layout (the SAT file
    tells: keymap.position_of)."""
    try:
        hidden, text_dim = state["patch_embed.text_proj.weight"].shape
        head_dim = state["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
        time_embed_dim = state["time_embedding.linear_1.weight"].shape[0]
        in_channels = state["patch_embed.proj.weight"].shape[1]
    except KeyError as e:
        raise ValueError(f"not a CogVideoX STAR network: no {e.args[0]}") from None
    layers = len({k.split(".")[1] for k in state if k.startswith("transformer_blocks.")})
    if in_channels != 2 * FIVE_B.latent_channels:
        raise ValueError(f"patch_embed.proj takes {in_channels} channels; STAR's takes 32 (x_t ‖ LR latent): "
                         f"a plain CogVideoX checkpoint is not STAR")
    shapes = dict(num_layers=layers, num_heads=hidden // head_dim, head_dim=head_dim, text_dim=text_dim,
                  time_embed_dim=time_embed_dim, position=position)
    for known in KNOWN:
        if all(getattr(known, k) == v for k, v in shapes.items()):
            return known
    return dataclasses.replace(FIVE_B, name=f"custom-{layers}x{hidden}", **shapes)
