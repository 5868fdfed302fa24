"""What fine-tuning trains in a STAR denoiser and how the rest is frozen, and the key adapter that starts
a denoiser from VEnhancer's weights (the paper's starting point)."""

from __future__ import annotations

import logging
import os

import torch

from star_model.checkpoint import CheckpointError, compare_keys, read_state_dict
from star_model.unet import StarDenoiser

log = logging.getLogger(__name__)

TRAINABLE_PREFIX = "VideoControlNet."  # the control branch, whole
LIEM_MARKERS = (".local1.", ".local2.")  # the LIEM gates, in the UNet and in the control branch
# VEnhancer-only tensors that STAR removed (reference 1.2): the noise-augmentation level embedding and
# the upscale-factor embedding of its control branch.
VENHANCER_ONLY_PREFIXES = ("VideoControlNet.hint_time_zero_linear.", "VideoControlNet.scale_cond.")


def is_trainable(name: str) -> bool:
    """The official trainable set: the control branch and every LIEM gate (`local` in the name)."""
    return name.startswith(TRAINABLE_PREFIX) or any(m in name for m in LIEM_MARKERS)


def freeze_for_finetune(model: StarDenoiser, everything: bool = False) -> list[torch.nn.Parameter]:
    """requires_grad only on the trainable parameters (the official leaves the UNet's requires_grad on
    and only keeps it out of the optimiser; turning it off saves the UNet's weight gradients).
    `everything`: the whole denoiser trains (from scratch)."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(everything or is_trainable(name))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def load_venhancer(model: StarDenoiser, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load VEnhancer weights into a STAR denoiser: strict except that the LIEM tensors may be missing.

    VEnhancer's `ControlledV2VUNet` is STAR without LIEM, plus two embeddings STAR removed. Returns
    (missing LIEM keys, dropped VEnhancer-only keys); the missing gates keep their initialisation, as
    in the official training (which loads with strict=False). Anything else missing, unexpected or
    mis-shaped raises CheckpointError.
    """
    state = read_state_dict(path)
    dropped = [k for k in state if k.startswith(VENHANCER_ONLY_PREFIXES)]
    for key in dropped:
        del state[key]
    missing, unexpected, misshaped = compare_keys(model.state_dict(), state)
    not_liem = [k for k in missing if not any(m in k for m in LIEM_MARKERS)]
    if not_liem or unexpected or misshaped:
        raise CheckpointError(
            f"{path} is not a VEnhancer checkpoint for this model: {len(not_liem)} missing non-LIEM keys "
            f"{not_liem[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(misshaped)} mis-shaped "
            f"{misshaped[:5]}")
    model.load_state_dict(state, strict=False)
    log.info("loaded VEnhancer %s: %d LIEM tensors missing (initialised from the seed): %s", path, len(missing),
             missing)
    log.info("dropped %d VEnhancer-only tensors: %s", len(dropped), dropped)
    return missing, dropped
