"""The two sets of settings the measurement scripts compare: the official inference's and ours."""

from __future__ import annotations

import torch

from star_model import vae as vae_configs
from star_model.restore import RestoreConfig

SETTINGS = ("official", "ours")


def settings_for(name: str, scale: int, **sampler) -> tuple[RestoreConfig, torch.dtype, vae_configs.VaeConfig]:
    """(restore config, denoiser dtype on a GPU, VAE config) of the official inference (fp16 as its
    `.half()`, whole-canvas VAE: its memory grows with the frame, 32-frame hard-cut windows, white
    canvas padding) or of ours (bf16, 768-pixel VAE tiles, planner-chosen windows and tiles)."""
    if name == "official":
        return RestoreConfig.official(scale=scale, **sampler), torch.float16, vae_configs.OFFICIAL
    if name == "ours":
        return RestoreConfig(scale=scale, **sampler), torch.bfloat16, vae_configs.TILED
    raise ValueError(f"settings {name!r}: choose one of {SETTINGS}")
