"""A fine-tuning checkpoint folder, as Ray Train stores it under `<storage>/<name>/step_N/`: the trainable
weights, the optimiser state and state.json (step, preset, every step's metrics, the resume points)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from star_model.checkpoint import CheckpointError, read_state_dict

WEIGHTS_FILE = "trainable.safetensors"  # the trainable tensors, fp32
OPTIMIZER_FILE = "optimizer.pt"  # AdamW state dict (torch.save; read back with weights_only=True)
STATE_FILE = "state.json"  # step, preset, metrics history, resumed_at
EMA_FILE = "ema.safetensors"  # the moving average of the trainable tensors (runs with FinetuneConfig.ema)


def save_checkpoint(folder: str | os.PathLike, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write the denoiser's trainable tensors, the optimiser state, `state` (it holds the step) and the
    moving average of the trainable tensors when there is one."""
    folder = Path(folder)
    trainable = {n: p.detach().to("cpu", torch.float32).contiguous()
                 for n, p in denoiser.named_parameters() if p.requires_grad}
    safetensors.torch.save_file(trainable, folder / WEIGHTS_FILE, metadata={"step": str(state["step"])})
    if ema is not None:
        safetensors.torch.save_file({n: t.detach().to("cpu", torch.float32).contiguous() for n, t in ema.items()},
                                    folder / EMA_FILE, metadata={"step": str(state["step"])})
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(json.dumps(state))


def restore_checkpoint(folder: str | os.PathLike, denoiser: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       preset: str) -> dict[str, Any]:
    """Load weights and optimiser state from a checkpoint folder of the same preset; returns state.json."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    if state["preset"] != preset:
        raise ValueError(f"the checkpoint in {folder} is of preset {state['preset']!r}, this run is "
                         f"{preset!r}; use another --storage or run name")
    weights = read_state_dict(folder / WEIGHTS_FILE)
    params = dict(denoiser.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} holds {len(weights)} tensors, the trainable set "
                              f"has {len(expected)}: {sorted(set(weights) ^ expected)[:5]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    device = next(denoiser.parameters()).device
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location=device, weights_only=True))
    return state


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(trainable weights, optimiser state dict, state.json) of a local checkpoint folder."""
    folder = Path(folder)
    weights = read_state_dict(folder / WEIGHTS_FILE)
    optimizer = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return weights, optimizer, json.loads((folder / STATE_FILE).read_text())


def read_ema(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The moving average of a checkpoint's trainable tensors, None when the run kept none."""
    path = Path(folder) / EMA_FILE
    return read_state_dict(path) if path.is_file() else None
