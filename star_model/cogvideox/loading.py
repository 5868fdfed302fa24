"""Build a `CogRestorer` for a cogvideox preset: from a weights folder of its layout (weights_folder.py),
or random for the tiny preset."""

from __future__ import annotations

import logging

import torch

from star_model.cogvideox.components import load_t5, load_vae, tiny_t5, tiny_vae
from star_model.cogvideox.config import CogConfig
from star_model.cogvideox.network import build_network, network_from_state
from star_model.cogvideox.restore import CogRestorer
from star_model.cogvideox.weights import read_network
from star_model.restore import RestoreConfig
from star_model.weights_folder import WeightPaths

log = logging.getLogger(__name__)


def load_cog_restorer(nominal: CogConfig, paths: WeightPaths | None, config: RestoreConfig, *,
                      device: torch.device, dtype: torch.dtype, seed: int = 0) -> CogRestorer:
    """The preset's restorer. With `paths`, the network's size comes from the checkpoint's shapes (the
    released file may be 2B-sized: official issue #33) and T5 and the VAE are checked against it; without,
    random weights of `nominal` drawn from `seed`."""
    # The VAE in bf16 where the network is (official: the whole engine), else float32 (fp16 overflows).
    vae_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    if paths is None:
        log.warning("preset of %s with RANDOM weights: its output is NOT a restoration", nominal.name)
        network = build_network(nominal, seed).to(device, dtype)
        return CogRestorer(network, tiny_t5(nominal, seed, device), tiny_vae(nominal, seed, device, vae_dtype), config)
    cfg, state = read_network(paths.checkpoint)
    if cfg.name != nominal.name:
        log.warning("%s holds the %s network (by its tensor shapes), not the %s", paths.checkpoint, cfg.name,
                    nominal.name)
    network = network_from_state(cfg, state, device=device, dtype=dtype, where=str(paths.checkpoint))
    del state
    text = load_t5(paths.text, cfg, device=device, dtype=dtype)
    return CogRestorer(network, text, load_vae(paths.vae, cfg, device=device, dtype=vae_dtype), config)
