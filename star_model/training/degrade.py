"""Synthetic training pairs for STAR: the official second-order degradation (Real-ESRGAN-style blur,
resize, noise and JPEG, twice, plus video-codec compression) turning a GT clip into (sharpened GT, LR).
Pure PyTorch/NumPy/PyAV, seeded through explicit generators only, so a seed reproduces a pair exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from star_model.training.degrade_config import (SINC_SMALL_KERNEL, BlurConfig, DegradeConfig, DegradeParams, KernelKind,
                                                KernelParams, NoiseKind, ResizeMode, StageConfig, StageParams)
from star_model.training.degrade_ops import (add_noise, compress_video, filter2d, from_u8, jpeg_round_trip, make_kernel,
                                             resize, to_u8, usm_sharpen)

# Written from the maths of reference §5.1, not from the official code. Where we differ (each marked
# where it happens): the stage-2 width bug is fixed; odd sizes are edge-padded for 4:2:0 codecs; JPEG is
# a real codec (Pillow) instead of DiffJPEG; bilinear/bicubic downscales are antialiased (switchable);
# the plateau β is uniform in [1, 2]; multi-frame H.264 runs without mbtree (determinism); and
# `per="clip"` (our option) draws one set of parameters per clip and compresses the clip as one video.


# ---------------------------------------------------------------------------------------------------
# Drawing the parameters (one draw per frame, or per clip)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _draw_beta(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    # As Real-ESRGAN: when the range straddles 1, half the draws are heavy-tailed (β < 1) and half
    # flat-topped (β > 1). For a range on one side of 1 (the plateau's [1, 2]) we draw uniformly, where
    # Real-ESRGAN's rule would give exactly β = 1 half the time.
    low, high = bounds
    if low < 1.0 < high:
        return _uniform(rng, (low, 1.0) if rng.random() < 0.5 else (1.0, high))
    return _uniform(rng, bounds)


def _draw_kernel(rng: np.random.Generator, blur: BlurConfig) -> KernelParams:
    size = int(rng.choice(blur.kernel_sizes))
    if rng.random() < blur.sinc_prob:
        omega = blur.sinc_omega_small if size < SINC_SMALL_KERNEL else blur.sinc_omega_large
        return KernelParams("sinc", size, omega_c=_uniform(rng, omega))
    kind: KernelKind = str(rng.choice(blur.kinds, p=blur.kind_probs))  # type: ignore[assignment]
    if kind in ("iso", "generalized_iso", "plateau_iso"):
        sigma_x = sigma_y = _uniform(rng, blur.sigma)
        theta = 0.0
    else:
        sigma_x, sigma_y = _uniform(rng, blur.sigma), _uniform(rng, blur.sigma)
        theta = _uniform(rng, blur.rotation)
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _draw_beta(rng, blur.beta_gaussian)
    elif kind.startswith("plateau"):
        beta = _draw_beta(rng, blur.beta_plateau)
    return KernelParams(kind, size, sigma_x, sigma_y, theta, beta)


def _draw_stage(rng: np.random.Generator, stage: StageConfig) -> StageParams:
    kernel = _draw_kernel(rng, stage.blur)
    if rng.random() >= stage.blur.prob:
        kernel = None  # drawn anyway so that the rest of the stream does not depend on this coin
    direction = rng.choice(3, p=stage.resize.probs)
    scale = _uniform(rng, (stage.resize.up, stage.resize.down, (1.0, 1.0))[direction])
    mode: ResizeMode = str(rng.choice(stage.resize.modes))  # type: ignore[assignment]
    noise = stage.noise
    gaussian = rng.random() < noise.gaussian_prob
    level = _uniform(rng, noise.gaussian_sigma) / 255.0 if gaussian else _uniform(rng, noise.poisson_scale)
    gray = bool(rng.random() < noise.gray_prob)
    quality = int(rng.integers(stage.jpeg_quality[0], stage.jpeg_quality[1] + 1))
    codec = str(rng.choice(stage.codecs))
    bitrate = int(rng.integers(stage.bitrate[0], stage.bitrate[1] + 1))
    kind: NoiseKind = "gaussian" if gaussian else "poisson"
    # drawn only where configured, so the official profiles' streams are as before
    crf = int(rng.integers(stage.crf[0], stage.crf[1] + 1)) if stage.crf is not None else None
    bpp = _uniform(rng, stage.bits_per_pixel) if stage.bits_per_pixel is not None else None
    return StageParams(kernel, scale, mode, kind, level, gray, quality, codec, bitrate, crf, bpp)


def _compress(x_bchw: Tensor, p: StageParams) -> np.ndarray:
    """The stage's JPEG and then its video codec: (B, 3, h, w) in 0..1 -> (B, h, w, 3) uint8."""
    height, width = x_bchw.shape[-2:]
    h264 = p.codec in ("libx264", "h264")
    crf = p.crf if h264 else None
    bitrate = p.bitrate
    if not h264 and p.bits_per_pixel is not None:
        bitrate = max(1, int(p.bits_per_pixel * height * width))
    return compress_video(to_u8(jpeg_round_trip(x_bchw, p.jpeg_quality)), p.codec, bitrate, crf=crf)


def _draw_params(rng: np.random.Generator, config: DegradeConfig) -> DegradeParams:
    # Stage 1 is drawn first, so the same seed gives the same stage 1 under both profiles.
    stage1 = _draw_stage(rng, config.stage1)
    if config.profile == "light":
        return DegradeParams(stage1, None, str(rng.choice(config.final_modes)))  # type: ignore[arg-type]
    stage2 = _draw_stage(rng, config.stage2)
    final_mode: ResizeMode = str(rng.choice(config.final_modes))  # type: ignore[assignment]
    sinc_size = int(rng.choice(config.stage2.blur.kernel_sizes))
    sinc = KernelParams("sinc", sinc_size, omega_c=_uniform(rng, config.final_sinc_omega))
    if rng.random() >= config.final_sinc_prob:
        sinc = None  # the official filters with a unit pulse instead: the same as not filtering
    jpeg_first = bool(rng.random() < config.jpeg_first_prob)
    return DegradeParams(stage1, stage2, final_mode, sinc, jpeg_first)


def _unit_generators(seed: int, unit: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent streams for one frame (per="frame") or the clip (unit 0): parameters, noise fields."""
    params_seed, noise_seed = np.random.SeedSequence([seed, unit]).generate_state(2, dtype=np.uint64)
    return np.random.default_rng(int(params_seed)), torch.Generator().manual_seed(int(noise_seed))


def draw_params(config: DegradeConfig, seed: int, num_frames: int) -> list[DegradeParams]:
    """The parameters `degrade_clip(frames, config, seed)` uses, one entry per frame of the clip
    (with per="clip" all entries are the same draw)."""
    _check_seed(seed)
    if config.per == "clip":
        return [_draw_params(_unit_generators(seed, 0)[0], config)] * num_frames
    return [_draw_params(_unit_generators(seed, i)[0], config) for i in range(num_frames)]


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")


# ---------------------------------------------------------------------------------------------------
# The pipeline


def _blur_resize_noise(x_bchw: Tensor, p: StageParams, size: tuple[int, int], antialias: bool,
                       gen: torch.Generator) -> Tensor:
    if p.kernel is not None:
        x_bchw = filter2d(x_bchw, make_kernel(p.kernel))
    x_bchw = resize(x_bchw, size, p.resize_mode, antialias)
    return add_noise(x_bchw, p.noise_kind, p.noise_level, p.gray_noise, gen)


def _degrade_unit(gt_bchw: Tensor, p: DegradeParams, config: DegradeConfig,
                  gen: torch.Generator) -> np.ndarray:
    """Degrades one frame (B = 1) or the whole clip (B = F) with one draw; returns (B, h, w, 3) uint8."""
    height, width = gt_bchw.shape[-2:]
    lr_size = (height // config.scale, width // config.scale)

    # 1. stage 1: blur, random resize (relative to the GT), noise, JPEG, video codec
    s1 = p.stage1
    size = (max(1, int(height * s1.resize_scale)), max(1, int(width * s1.resize_scale)))
    x = _blur_resize_noise(gt_bchw, s1, size, config.antialias, gen)
    if config.compress == "lr":  # light profile, ours: to the LR size, then compressed there
        return _compress(resize(x, lr_size, p.final_mode, config.antialias), s1)
    x = from_u8(_compress(x, s1))
    if p.stage2 is None:  # light profile: straight to the LR size
        return to_u8(resize(x, lr_size, p.final_mode, config.antialias))

    # 2. stage 2: blur, random resize relative to the LR size, noise. The official computes the width
    #    as W / s · s (≈ W, a bug that the final resize hides); we scale both sides by H/scale · s.
    s2 = p.stage2
    size = (max(1, int(height / config.scale * s2.resize_scale)),
            max(1, int(width / config.scale * s2.resize_scale)))
    x = _blur_resize_noise(x, s2, size, config.antialias, gen)

    # 3. final: [resize to LR + sinc, JPEG] or [JPEG, resize to LR + sinc], then the video codec again
    def resize_sinc(y: Tensor) -> Tensor:
        y = resize(y, lr_size, p.final_mode, config.antialias)
        return y if p.final_sinc is None else filter2d(y, make_kernel(p.final_sinc))

    if p.jpeg_first:
        x = resize_sinc(jpeg_round_trip(x, s2.jpeg_quality))
    else:
        x = jpeg_round_trip(resize_sinc(x), s2.jpeg_quality)
    return compress_video(to_u8(x), s2.codec, s2.bitrate, crf=s2.crf)


def degrade_clip(frames_fhwc_u8: np.ndarray, config: DegradeConfig,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A training pair from a GT clip (F, H, W, 3) uint8: (gt_fhwc_u8, lq_fhwc_u8).

    gt is the USM-sharpened clip, (F, H, W, 3): the official saves it as the GT and degrades it.
    lq is the degraded clip at the LR size (F, H // scale, W // scale, 3). The official bicubic-upsamples
    it back to (H, W) before saving; our trainer takes the LR (the model pipeline upsamples it itself).
    The same seed gives bit-identical outputs on CPU; `draw_params(config, seed, F)` lists the
    parameters used (they are drawn through it).
    """
    _check_seed(seed)
    if frames_fhwc_u8.dtype != np.uint8 or frames_fhwc_u8.ndim != 4 or frames_fhwc_u8.shape[-1] != 3:
        raise ValueError(
            f"frames must be (F, H, W, 3) uint8, got {frames_fhwc_u8.shape} {frames_fhwc_u8.dtype}")
    num_frames, height, width, _ = frames_fhwc_u8.shape
    if num_frames < 1 or height < config.scale or width < config.scale:
        raise ValueError(f"clip {frames_fhwc_u8.shape} is empty or smaller than scale={config.scale}")

    gt_fhwc_u8 = usm_sharpen(frames_fhwc_u8, config.usm_radius, config.usm_weight, config.usm_threshold)
    gt_fchw = from_u8(gt_fhwc_u8)  # the degradation starts from the sharpened GT, as saved
    params = draw_params(config, seed, num_frames)
    if config.per == "clip":
        return gt_fhwc_u8, _degrade_unit(gt_fchw, params[0], config, _unit_generators(seed, 0)[1])
    # official: an independent draw, and a one-frame video, per frame
    lq = [_degrade_unit(gt_fchw[i : i + 1], params[i], config, _unit_generators(seed, i)[1]) for i in range(num_frames)]
    return gt_fhwc_u8, np.concatenate(lq)


def downscale_clip(frames_fhwc_u8: np.ndarray, scale: int) -> np.ndarray:
    """The clean LR of a clip: an antialiased bicubic downscale by `scale` (as MATLAB's imresize, what the
    SR literature's x2/x4 benchmarks use), (F, H, W, 3) -> (F, H // scale, W // scale, 3) uint8."""
    frames = from_u8(frames_fhwc_u8)
    return to_u8(resize(frames, (frames.shape[-2] // scale, frames.shape[-1] // scale), "bicubic", antialias=True))

