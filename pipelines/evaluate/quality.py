"""Full-reference quality of a restored clip: PSNR and SSIM on luma, VMAF and VMAF-NEG, and a flow-based
warping error.

Conventions follow the video super-resolution literature (the STAR paper's tables among them): luma is
BT.601 Y in 16..235 (MATLAB's rgb2ycbcr), a border of `scale` pixels is shaved before PSNR and SSIM,
and SSIM is Wang et al.'s Gaussian-window form (scikit-image with gaussian_weights, sigma 1.5, no
sample covariance). The warping error is Lai et al. 2018's E_warp: the mean squared difference between
a frame and the next one warped back onto it, over pixels that the flow sees in both frames. The flow
is computed once on the reference (OpenCV's Farneback), so every method is judged on the same motion.
VMAF is Netflix's v0.6.1 model through the `vmaf-torch` package (a PyTorch port of libvmaf's features and
SVM, on the CPU), on the same luma of whole frames; VMAF-NEG is its "no enhancement gain" variant, which
does not reward sharpening or contrast added beyond the reference. Scores are not clipped to 0..100.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity
from vmaf_torch import VMAF

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def luma(frames_fhwc_u8: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, H, W) float64 BT.601 Y in 16..235."""
    return 16.0 + frames_fhwc_u8.astype(np.float64) @ _Y_WEIGHTS


def _shave(y: np.ndarray, border: int) -> np.ndarray:
    return y[:, border:-border, border:-border] if border else y


def psnr_y(restored_fhwc_u8: np.ndarray, reference_fhwc_u8: np.ndarray, border: int = 0) -> float:
    """Mean over frames of the luma PSNR in dB (peak 255)."""
    a, b = (_shave(luma(x), border) for x in (restored_fhwc_u8, reference_fhwc_u8))
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))))


def ssim_y(restored_fhwc_u8: np.ndarray, reference_fhwc_u8: np.ndarray, border: int = 0) -> float:
    """Mean over frames of the luma SSIM."""
    a, b = (_shave(luma(x), border) for x in (restored_fhwc_u8, reference_fhwc_u8))
    return float(np.mean([structural_similarity(x, y, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False) for x, y in zip(a, b)]))


class Vmaf:
    """VMAF and VMAF-NEG of restored clips against one reference clip, the mean over its frames."""

    def __init__(self) -> None:
        self.models = {neg: VMAF(temporal_pooling=True, NEG=neg, clip_score=False) for neg in (False, True)}

    @torch.no_grad()
    def __call__(self, restored_fhwc_u8: np.ndarray, reference_fhwc_u8: np.ndarray) -> tuple[float, float]:
        """(VMAF, VMAF-NEG); libvmaf's order of arguments: the reference first."""
        ref, dist = (torch.from_numpy(luma(x)).float()[:, None] for x in (reference_fhwc_u8, restored_fhwc_u8))
        return float(self.models[False](ref, dist)), float(self.models[True](ref, dist))


class ReferenceFlow:
    """Forward flows between consecutive reference frames and the masks where they can be trusted."""

    def __init__(self, reference_fhwc_u8: np.ndarray) -> None:
        grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in reference_fhwc_u8]
        height, width = grey[0].shape
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        self.maps: list[tuple[np.ndarray, np.ndarray]] = []  # where frame t's pixels lie in frame t+1
        self.masks: list[np.ndarray] = []  # (H, W) bool: seen in both frames
        for a, b in zip(grey[:-1], grey[1:]):
            forward = _flow(a, b)
            backward = _flow(b, a)
            map_x, map_y = xs + forward[..., 0], ys + forward[..., 1]
            # forward-backward consistency (Sundaram et al.): the backward flow at the target must undo
            # the forward flow, else the pixel is occluded or the flow is wrong there
            back_at_target = np.stack([cv2.remap(backward[..., c], map_x, map_y, cv2.INTER_LINEAR) for c in (0, 1)], -1)
            mismatch = ((forward + back_at_target) ** 2).sum(-1)
            bound = 0.01 * ((forward**2).sum(-1) + (back_at_target**2).sum(-1)) + 0.5
            inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
            self.maps.append((map_x, map_y))
            self.masks.append(inside & (mismatch < bound))

    def warping_error(self, frames_fhwc_u8: np.ndarray) -> float:
        """E_warp of `frames` (same size as the reference): mean over frame pairs of the masked mean
        squared RGB difference in [0, 1] units between frame t and frame t+1 warped onto it."""
        if len(frames_fhwc_u8) < 2:
            return float("nan")
        errors = []
        for t, ((map_x, map_y), mask) in enumerate(zip(self.maps, self.masks)):
            nxt = frames_fhwc_u8[t + 1].astype(np.float32) / 255.0
            warped = cv2.remap(nxt, map_x, map_y, cv2.INTER_LINEAR)
            diff = ((frames_fhwc_u8[t].astype(np.float32) / 255.0 - warped) ** 2).sum(-1)
            errors.append(float(diff[mask].mean()) if mask.any() else 0.0)
        return float(np.mean(errors))


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 2) Farneback flow from grey frame a to b (OpenCV's documented default parameters)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
