"""Reading the CogVideoX STAR network's weights: the official SAT file (`mp_rank_00_model_states.pt`,
tensors under `module`, read with torch.load(weights_only=True)) through the key map, or our safetensors
conversion of it; the config comes from the tensor shapes either way (5B, 2B or a test size)."""

from __future__ import annotations

import logging
from pathlib import Path

import safetensors
import torch
from torch import Tensor

from star_model.checkpoint import SAFETENSORS_SUFFIX, CheckpointError, read_state_dict, write_safetensors
from star_model.cogvideox.config import CogConfig, config_from_shapes
from star_model.cogvideox.keymap import position_of, sat_to_ours, unwrap_engine

log = logging.getLogger(__name__)

SAT_MODULE_KEY = "module"


def read_sat(path: str | Path) -> tuple[CogConfig, dict[str, Tensor]]:
    """A SAT checkpoint in our layout, LoRA merged, and its config; logs what the key map did."""
    network, other = unwrap_engine(read_state_dict(path, under=SAT_MODULE_KEY))
    position = position_of(network)
    ours, report = sat_to_ours(network)
    log.info("%s: %s; %d tensors of other parts dropped", path, report.summary(), len(other))
    return config_from_shapes(ours, position), ours


def read_network(path: str | Path) -> tuple[CogConfig, dict[str, Tensor]]:
    """The network's config and tensors (our layout) from a SAT .pt or from our .safetensors."""
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        return read_sat(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        position = (f.metadata() or {}).get("position")
    if position not in ("rope", "sincos"):
        raise CheckpointError(f"{path}: no position kind in its metadata; write it with convert_sat "
                              f"(jobs/fetch_weights.py --variant cogvideox)")
    state = read_state_dict(path)
    return config_from_shapes(state, position), state


def convert_sat(src: str | Path, dst: str | Path, dtype: torch.dtype | str = torch.bfloat16) -> CogConfig:
    """Convert the SAT file `src` into our safetensors layout at `dst` (atomically); the config it has."""
    cfg, state = read_sat(src)
    write_safetensors(state, dst, dtype, {"source": Path(src).name, "position": cfg.position, "variant": cfg.name})
    return cfg
