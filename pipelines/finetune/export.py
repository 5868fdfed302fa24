"""Turn a from-scratch training checkpoint into a preset's shipped weights file (nano's
star_model/weights/nano-x2.safetensors and nano-x4.safetensors): the trained denoiser plus the fixed
text tower it was trained with."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipelines.finetune.checkpoint import read_checkpoint, read_ema
from star_model.presets import build_models, get_preset, load_shipped, save_shipped


def export_shipped(checkpoint: str | os.PathLike, out: str | os.PathLike, init: str | None = None) -> dict[str, str]:
    """Write `out` from a checkpoint folder (step_N/) of a `from_scratch` run; returns the metadata
    written into the file (preset, step, seed, whether the weights are the run's moving average). `init`:
    the file the run started from (its --init), where the checkpoint does not say. Loads the result back
    strictly before returning."""
    weights, _, state = read_checkpoint(checkpoint)
    average = read_ema(checkpoint)  # the moving average of the weights, where the run kept one
    weights = average if average is not None else weights
    preset = get_preset(state["preset"])
    if preset.shipped is None:
        raise ValueError(f"preset {preset.name!r} has no shipped weights; only from-scratch presets export")
    seed = int(state.get("seed", 0))
    # The text tower and every non-trained part are rebuilt exactly as the run built them: from the file
    # the run started from (--init), else from the same seed.
    init = state.get("init") or init
    if init:
        denoiser, text, _ = load_shipped(preset, device=torch.device("cpu"), dtype=torch.float32, path=init)
    else:
        denoiser, text, _ = build_models(preset, None, device=torch.device("cpu"), dtype=torch.float32, seed=seed,
                                         fresh=True)
    denoiser.load_state_dict(weights, strict=True)  # from scratch: the checkpoint holds the whole denoiser
    metadata = {"preset": preset.name, "step": str(state["step"]), "seed": str(seed),
                "averaged": "ema" if average is not None else "no"}
    save_shipped(out, denoiser, text, metadata)
    load_shipped(preset, device=torch.device("cpu"), dtype=torch.float32, path=Path(out))
    return metadata
