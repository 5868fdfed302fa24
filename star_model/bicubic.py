"""The `bicubic` preset's restorer: plain bicubic upscaling in place of STAR, with the same frames in and
out as `StarRestorer`. No weights and no GPU: a dry run of the whole pipeline on CPUs, and a measure of
the pipeline's own cost."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from star_model.restore import RestoreConfig


class BicubicRestorer:
    """uint8 frames (F, H, W, 3) -> uint8 frames (F, s*H, s*W, 3) by bicubic interpolation (uint16 in,
    uint16 out). `prompt` and `seed` are taken and ignored, so the restore stage calls it like STAR."""

    def __init__(self, config: RestoreConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, frames_fhwc: np.ndarray | Tensor, prompt: str = "", seed: int | None = None) -> np.ndarray:
        frames_fhwc = np.asarray(frames_fhwc)
        if frames_fhwc.dtype not in (np.uint8, np.uint16) or frames_fhwc.ndim != 4 or frames_fhwc.shape[-1] != 3:
            raise ValueError(f"expected uint8 or uint16 frames (F, H, W, 3), got {frames_fhwc.dtype} "
                             f"{frames_fhwc.shape}")
        num_frames, height, width, _ = frames_fhwc.shape
        scale = self.config.scale
        out_fhwc = np.empty((num_frames, height * scale, width * scale, 3), frames_fhwc.dtype)
        # One frame at a time: a 32-frame window at 1080p x4 would be 12.7 GB as one float32 tensor.
        for index, frame_hwc in enumerate(frames_fhwc):
            out_fhwc[index] = upscale_frame(frame_hwc, scale)
        return out_fhwc


def upscale_frame(frame_hwc: np.ndarray, scale: int) -> np.ndarray:
    """One uint8 or uint16 frame (H, W, 3) -> (s*H, s*W, 3) of the same dtype: F.interpolate's bicubic
    (no antialias, align_corners=False), clamped to the dtype's range and rounded."""
    top = float(np.iinfo(frame_hwc.dtype).max)
    # float32 holds every uint16 value exactly (torch has few uint16 kernels)
    chw: Tensor = torch.from_numpy(frame_hwc.astype(np.float32)).permute(2, 0, 1)  # (3, H, W)
    up = F.interpolate(chw[None], scale_factor=scale, mode="bicubic", align_corners=False, antialias=False)[0]
    return up.clamp(0, top).round().permute(1, 2, 0).numpy().astype(frame_hwc.dtype)  # (s*H, s*W, 3)
