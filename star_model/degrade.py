"""Synthetic training pairs for STAR: the official second-order degradation (Real-ESRGAN-style blur,
resize, noise and JPEG, twice, plus video-codec compression) turning a GT clip into (sharpened GT, LR).
Pure PyTorch/NumPy/PyAV, seeded through explicit generators only, so a seed reproduces a pair exactly.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image  # Pillow is a dependency of diffusers, which we require
from torch import Tensor

# Written from the maths of reference §5.1, not from the official code. Where we differ (each marked
# where it happens): the stage-2 width bug is fixed; odd sizes are edge-padded for 4:2:0 codecs; JPEG is
# a real codec (Pillow) instead of DiffJPEG; bilinear/bicubic downscales are antialiased (switchable);
# the plateau β is uniform in [1, 2]; multi-frame H.264 runs without mbtree (determinism); and
# `per="clip"` (our option) draws one set of parameters per clip and compresses the clip as one video.

KernelKind = Literal[
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc"]
ResizeMode = Literal["area", "bilinear", "bicubic"]
NoiseKind = Literal["gaussian", "poisson"]
Profile = Literal["full", "light"]
Per = Literal["frame", "clip"]

MIXED_KINDS: tuple[KernelKind, ...] = (
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")
# "h264" names no encoder: PyAV falls back to FFmpeg's default H.264 encoder, libx264 in PyAV's wheels.
# So drawing uniformly from these names gives H.264 with p 2/3 and MPEG-4 part 2 with p 1/3, as the
# official does.
VIDEO_CODECS = ("libx264", "h264", "mpeg4")
SINC_SMALL_KERNEL = 13  # below this kernel size the sinc cut-off is drawn from the narrower range


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BlurConfig:
    """One blur draw: a sinc kernel with p `sinc_prob`, else one of the six Gaussian-family kernels."""

    prob: float = 1.0  # probability that the stage blurs at all
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kinds: tuple[KernelKind, ...] = MIXED_KINDS
    kind_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)  # pixels, each axis
    rotation: tuple[float, float] = (-math.pi, math.pi)
    beta_gaussian: tuple[float, float] = (0.5, 4.0)  # shape of the generalized Gaussian
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_omega_small: tuple[float, float] = (math.pi / 3, math.pi)  # kernel size < 13
    sinc_omega_large: tuple[float, float] = (math.pi / 5, math.pi)


@dataclass(frozen=True)
class ResizeConfig:
    """Random rescale: up / down / keep with `probs`, factor uniform in `up` or `down`, mode uniform."""

    probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    up: tuple[float, float] = (1.0, 1.5)
    down: tuple[float, float] = (0.15, 1.0)
    modes: tuple[ResizeMode, ...] = RESIZE_MODES


@dataclass(frozen=True)
class NoiseConfig:
    """Gaussian noise with p `gaussian_prob` (σ in 8-bit levels), else Poisson; gray with p `gray_prob`."""

    gaussian_prob: float = 0.5
    gaussian_sigma: tuple[float, float] = (1.0, 30.0)  # in 0..255 levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4


@dataclass(frozen=True)
class StageConfig:
    """Ranges of one degradation stage: blur, resize, noise, JPEG quality, video codec and bitrate."""

    blur: BlurConfig = BlurConfig()
    resize: ResizeConfig = ResizeConfig()
    noise: NoiseConfig = NoiseConfig()
    jpeg_quality: tuple[int, int] = (30, 95)
    codecs: tuple[str, ...] = VIDEO_CODECS
    bitrate: tuple[int, int] = (10_000, 100_000)  # bit/s at 1 frame/s, so bits per frame


STAGE1 = StageConfig()
STAGE2 = StageConfig(
    blur=BlurConfig(prob=0.8, sigma=(0.2, 1.5)),
    resize=ResizeConfig(probs=(0.3, 0.4, 0.3), up=(1.0, 1.2), down=(0.3, 1.0)),
    noise=NoiseConfig(gaussian_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
)


@dataclass(frozen=True)
class DegradeConfig:
    """Every range of the official training-pair degradation (reference §5.1), plus our two switches.

    profile: "full" = both stages (official `degrade_video.py`); "light" = stage 1 then a plain resize to
    the LR size (the one-stage `degrade_video_mid.py`, plausibly what `light_deg.pt` saw [inferred]).
    per: "frame" = parameters re-drawn for every frame and each frame compressed as its own one-frame
    video (official); "clip" = one draw for the whole clip, compressed as one video (ours: temporally
    steady, and what a codec does to a real video).
    """

    scale: int = 4
    usm_radius: int = 50  # an even radius grows by one: kernel 51
    usm_weight: float = 0.5
    usm_threshold: float = 10.0  # in 0..255 levels
    stage1: StageConfig = STAGE1
    stage2: StageConfig = STAGE2
    final_sinc_prob: float = 0.8
    final_sinc_omega: tuple[float, float] = (math.pi / 3, math.pi)
    final_modes: tuple[ResizeMode, ...] = RESIZE_MODES
    jpeg_first_prob: float = 0.5  # [JPEG, resize, sinc] instead of [resize, sinc, JPEG]
    # Torch antialiasing on bilinear/bicubic downscales. The Real-ESRGAN recipe calls F.interpolate
    # without it, so its downscales also alias [inferred for STAR]; we antialias by default.
    antialias: bool = True
    profile: Profile = "full"
    per: Per = "frame"

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"DegradeConfig.scale={self.scale} must be >= 1")
        if self.profile not in ("full", "light"):
            raise ValueError(f"DegradeConfig.profile={self.profile!r}; use 'full' or 'light'")
        if self.per not in ("frame", "clip"):
            raise ValueError(f"DegradeConfig.per={self.per!r}; use 'frame' or 'clip'")
        if self.usm_radius < 1 or self.usm_weight < 0:
            raise ValueError(
                f"need usm_radius >= 1 and usm_weight >= 0, got {self.usm_radius}, {self.usm_weight}")
        _check_range("final_sinc_omega", self.final_sinc_omega)
        _check_modes("final_modes", self.final_modes)
        for name, stage in (("stage1", self.stage1), ("stage2", self.stage2)):
            _check_stage(name, stage)
        for name in ("final_sinc_prob", "jpeg_first_prob"):
            _check_prob(name, getattr(self, name))


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}={p} is not a probability in [0, 1]")


def _check_range(name: str, bounds: Sequence[float]) -> None:
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"{name}={bounds} must be a (low, high) pair with low <= high")


def _check_modes(name: str, modes: Sequence[str]) -> None:
    if not modes or any(m not in RESIZE_MODES for m in modes):
        raise ValueError(f"{name}={modes}; choose from {RESIZE_MODES}")


def _check_stage(name: str, stage: StageConfig) -> None:
    blur, resize, noise = stage.blur, stage.resize, stage.noise
    if not blur.kernel_sizes or any(k < 1 or k % 2 == 0 for k in blur.kernel_sizes):
        raise ValueError(f"{name}.blur.kernel_sizes={blur.kernel_sizes} must be odd and positive")
    if len(blur.kinds) != len(blur.kind_probs) or any(k not in MIXED_KINDS for k in blur.kinds):
        raise ValueError(f"{name}.blur.kinds={blur.kinds} must be from {MIXED_KINDS}, one prob each")
    for label, probs in (("blur.kind_probs", blur.kind_probs), ("resize.probs", resize.probs)):
        if abs(sum(probs) - 1.0) > 1e-6 or min(probs) < 0:
            raise ValueError(f"{name}.{label}={probs} must be non-negative and sum to 1")
    for label, p in (("blur.prob", blur.prob), ("blur.sinc_prob", blur.sinc_prob),
                     ("noise.gaussian_prob", noise.gaussian_prob), ("noise.gray_prob", noise.gray_prob)):
        _check_prob(f"{name}.{label}", p)
    ranges = {"blur.sigma": blur.sigma, "blur.rotation": blur.rotation,
              "blur.beta_gaussian": blur.beta_gaussian, "blur.beta_plateau": blur.beta_plateau,
              "blur.sinc_omega_small": blur.sinc_omega_small, "blur.sinc_omega_large": blur.sinc_omega_large,
              "resize.up": resize.up, "resize.down": resize.down, "noise.gaussian_sigma": noise.gaussian_sigma,
              "noise.poisson_scale": noise.poisson_scale, "jpeg_quality": stage.jpeg_quality,
              "bitrate": stage.bitrate}
    for label, bounds in ranges.items():
        _check_range(f"{name}.{label}", bounds)
    if blur.sigma[0] <= 0 or resize.down[0] <= 0 or min(blur.sinc_omega_small + blur.sinc_omega_large) <= 0:
        raise ValueError(f"{name}: blur sigma, sinc cut-offs and resize down factors must be > 0")
    if not 1 <= stage.jpeg_quality[0] <= stage.jpeg_quality[1] <= 100:
        raise ValueError(f"{name}.jpeg_quality={stage.jpeg_quality} must lie in [1, 100]")
    if not stage.codecs or any(c not in VIDEO_CODECS for c in stage.codecs):
        raise ValueError(f"{name}.codecs={stage.codecs}; choose from {VIDEO_CODECS}")
    _check_modes(f"{name}.resize.modes", resize.modes)


FULL = DegradeConfig()
LIGHT = DegradeConfig(profile="light")
# Ours, for nano (star_model/weights/nano.md): the light profile at mild ranges, one draw per clip, and
# no USM sharpening of the GT, so the model learns to reach the real HR picture (what PSNR and SSIM
# against HR measure) from LR clips with some blur, noise and compression rather than from the
# heavy Real-ESRGAN mix a 4.8 M-parameter model trained for hours could not undo.
MILD = DegradeConfig(
    usm_weight=0.0, profile="light", per="clip",
    stage1=StageConfig(blur=BlurConfig(prob=0.5, sigma=(0.2, 1.2)),
                       resize=ResizeConfig(probs=(0.1, 0.3, 0.6), up=(1.0, 1.2), down=(0.6, 1.0)),
                       noise=NoiseConfig(gaussian_sigma=(0.5, 4.0), poisson_scale=(0.05, 0.5)),
                       jpeg_quality=(70, 95), bitrate=(100_000, 400_000)))
PROFILES: dict[str, DegradeConfig] = {"full": FULL, "light": LIGHT, "mild": MILD}


# ---------------------------------------------------------------------------------------------------
# Drawn parameters (one draw per frame, or per clip)


@dataclass(frozen=True)
class KernelParams:
    """One blur kernel. sigma_x/sigma_y/theta/beta for the Gaussian family; omega_c for sinc."""

    kind: KernelKind
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    omega_c: float = 0.0


@dataclass(frozen=True)
class StageParams:
    """What one stage drew (stage 2's JPEG and codec act in the final step)."""

    kernel: KernelParams | None  # None: this stage does not blur
    resize_scale: float  # 1.0 = keep
    resize_mode: ResizeMode
    noise_kind: NoiseKind
    noise_level: float  # Gaussian σ in 0..1 units, or the Poisson scale
    gray_noise: bool
    jpeg_quality: int
    codec: str
    bitrate: int


@dataclass(frozen=True)
class DegradeParams:
    """Everything drawn for one frame (per="frame") or one clip (per="clip")."""

    stage1: StageParams
    stage2: StageParams | None  # None for the light profile
    final_mode: ResizeMode  # the resize to (H/scale, W/scale)
    final_sinc: KernelParams | None = None
    jpeg_first: bool = False


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
    return StageParams(kernel, scale, mode, kind, level, gray, quality, codec, bitrate)


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
# Kernels and filtering


def make_kernel(params: KernelParams) -> Tensor:
    """The (size, size) float32 kernel, normalised to sum to 1.

    Gaussian family, with u, v the pixel offset rotated by θ and q = u²/σx² + v²/σy² (= xᵀΣ⁻¹x for
    Σ = R diag(σx², σy²) Rᵀ): Gaussian exp(-q/2), generalized Gaussian exp(-q^β/2),
    plateau 1/(1 + q^β). Sinc (circular low-pass with cut-off ω_c): ω_c·J1(ω_c·r) / (2π·r), whose
    limit at r = 0 is ω_c²/(4π).
    """
    if params.size < 1 or params.size % 2 == 0:
        raise ValueError(f"kernel size {params.size} must be odd and positive")
    if (params.omega_c <= 0) if params.kind == "sinc" else min(params.sigma_x, params.sigma_y) <= 0:
        raise ValueError(f"{params} has a zero or negative width; sigma_x, sigma_y (or omega_c) must be > 0")
    half = params.size // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")  # (k, k) each
    if params.kind == "sinc":
        r = torch.hypot(x, y)
        w = params.omega_c
        safe_r = torch.where(r == 0, torch.ones_like(r), r)
        kernel = torch.where(r == 0, torch.full_like(r, w * w / (4 * math.pi)),
                             w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r))
    else:
        cos, sin = math.cos(params.theta), math.sin(params.theta)
        u, v = cos * x + sin * y, -sin * x + cos * y
        q = (u / params.sigma_x) ** 2 + (v / params.sigma_y) ** 2
        if params.kind in ("iso", "aniso"):
            kernel = torch.exp(-0.5 * q)
        elif params.kind.startswith("generalized"):
            kernel = torch.exp(-0.5 * q.pow(params.beta))
        elif params.kind.startswith("plateau"):
            kernel = 1.0 / (1.0 + q.pow(params.beta))
        else:
            raise ValueError(f"unknown kernel kind {params.kind!r}; use one of {MIXED_KINDS + ('sinc',)}")
    return (kernel / kernel.sum()).float()


def _pad(x_bchw: Tensor, pad_h: int, pad_w: int) -> Tensor:
    # Reflect (OpenCV's default border) where the frame is large enough; a frame no wider than the
    # padding (a tiny LR frame under a 21-tap kernel) falls back to replicate.
    h, w = x_bchw.shape[-2:]
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x_bchw, (pad_w, pad_w, pad_h, pad_h), mode=mode)


def filter2d(x_bchw: Tensor, kernel_kk: Tensor) -> Tensor:
    """Convolves every channel of (B, C, H, W) with one (kh, kw) kernel; reflect padding, same size."""
    kh, kw = kernel_kk.shape
    channels = x_bchw.shape[1]
    weight = kernel_kk.to(x_bchw.dtype).expand(channels, 1, kh, kw)  # (C, 1, kh, kw) depthwise
    return F.conv2d(_pad(x_bchw, kh // 2, kw // 2), weight, groups=channels)


def _resize(x_bchw: Tensor, size: tuple[int, int], mode: ResizeMode, antialias: bool) -> Tensor:
    if tuple(x_bchw.shape[-2:]) == size:
        return x_bchw
    if mode == "area":
        return F.interpolate(x_bchw, size=size, mode="area")
    down = size[0] < x_bchw.shape[-2] or size[1] < x_bchw.shape[-1]
    return F.interpolate(x_bchw, size=size, mode=mode, align_corners=False, antialias=antialias and down)


# ---------------------------------------------------------------------------------------------------
# Noise, JPEG, video compression


def _luma(x_bchw: Tensor) -> Tensor:
    """ITU-R BT.601 luma, (B, 1, H, W)."""
    r, g, b = x_bchw.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b)[:, None]


def _add_noise(x_bchw: Tensor, kind: NoiseKind, level: float, gray: bool, gen: torch.Generator) -> Tensor:
    """Adds Gaussian (σ = level) or Poisson (scale = level) noise; gray noise is one field for all channels.

    Poisson, as Real-ESRGAN: the image (or its luma, for gray noise) is rounded to 8 bits, its number of
    distinct levels per frame n gives photon counts v = 2^ceil(log2 n), and the noise is
    (Poisson(img·v)/v − img)·scale. So flat or dark frames (few levels) get stronger noise.
    """
    b, c, h, w = x_bchw.shape
    if kind == "gaussian":
        field_shape = (b, 1, h, w) if gray else (b, c, h, w)
        noise = torch.randn(field_shape, generator=gen, dtype=x_bchw.dtype) * level
    else:
        img = _luma(x_bchw) if gray else x_bchw
        levels_u8 = (img.clamp(0, 1) * 255).round()
        counts = torch.tensor([torch.bincount(f.flatten().long(), minlength=256).count_nonzero().item()
                               for f in levels_u8], dtype=img.dtype)
        photons = (2.0 ** torch.ceil(torch.log2(counts))).view(b, 1, 1, 1)
        img = levels_u8 / 255
        noise = (torch.poisson(img * photons, generator=gen) / photons - img) * level
    return (x_bchw + noise).clamp(0, 1)  # clamped as the official ("clip=True")


def _to_u8(x_bchw: Tensor) -> np.ndarray:
    """(B, C, H, W) in 0..1 -> (B, H, W, C) uint8, clamped and rounded."""
    return (x_bchw.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _from_u8(frames_bhwc_u8: np.ndarray) -> Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames_bhwc_u8)).permute(0, 3, 1, 2).float() / 255


def _jpeg(x_bchw: Tensor, quality: int) -> Tensor:
    """Real JPEG (libjpeg through Pillow), 4:2:0 chroma. The official uses DiffJPEG, a differentiable
    emulation; both scale the standard IJG tables by quality (q < 50: 5000/q %, else 200 − 2q %), but a
    real codec rounds its input to 8 bits and entropy-codes, so the artefacts match a real file."""
    out = []
    for frame in _to_u8(x_bchw):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=2)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return _from_u8(np.stack(out))


def compress_video(frames_fhwc_u8: np.ndarray, codec: str, bitrate: int) -> np.ndarray:
    """Encodes the frames as one yuv420p video at 1 frame/s (so `bitrate` is bits per frame) into an
    in-memory MP4 and decodes it back; (F, H, W, 3) uint8 in and out.

    Bit-identical for the same input: single-threaded, and for multi-frame H.264 without x264's
    macroblock tree. With mbtree on, a multi-frame encode of small frames (e.g. 4 frames of 48×6) varies
    from call to call within one process (measured, libx264 in PyAV 18); one-frame encodes, the official
    per-frame case, do not, so they keep x264's defaults. 4:2:0 needs even sizes: an odd frame is
    edge-padded by one row/column and cropped back (libx264 refuses odd sizes; the official's random
    resizes can make them).
    """
    f, h, w, _ = frames_fhwc_u8.shape
    padded = np.pad(frames_fhwc_u8, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    options = {"x264-params": "mbtree=0"} if f > 1 and codec in ("libx264", "h264") else {}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=1, options=options)
        stream.width, stream.height = padded.shape[2], padded.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bitrate
        # One thread: x264's frame threading changes its decisions with the thread count, which would
        # make the pairs depend on the machine's core count.
        stream.codec_context.thread_count = 1
        for i, frame in enumerate(padded):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    buf.seek(0)
    with av.open(buf, mode="r") as container:
        container.streams.video[0].codec_context.thread_count = 1
        decoded = np.stack([p.to_ndarray(format="rgb24") for p in container.decode(video=0)])
    assert decoded.shape[0] == f, f"codec {codec} returned {decoded.shape[0]} of {f} frames"
    return decoded[:, :h, :w]


# ---------------------------------------------------------------------------------------------------
# The pipeline


def usm_sharpen(frames_fhwc_u8: np.ndarray, radius: int = 50, weight: float = 0.5,
                threshold: float = 10.0) -> np.ndarray:
    """Unsharp mask with a soft threshold (the official sharpens the GT before degrading it).

    blur = G * img with a Gaussian of size k = radius (+1 if even) and OpenCV's σ for that size,
    0.3·((k − 1)/2 − 1) + 0.8; residual = img − blur; mask = [|residual|·255 > threshold], softened
    by G; out = mask·clamp(img + weight·residual) + (1 − mask)·img. (F, H, W, 3) uint8 in and out.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = (g / g.sum()).float()

    def blur(x_bchw: Tensor) -> Tensor:  # separable: 2·51 taps instead of 51²
        return filter2d(filter2d(x_bchw, g[None, :]), g[:, None])

    img = _from_u8(frames_fhwc_u8)  # (F, 3, H, W)
    residual = img - blur(img)
    soft_mask = blur((residual.abs() * 255 > threshold).float())
    sharp = (img + weight * residual).clamp(0, 1)
    return _to_u8(soft_mask * sharp + (1 - soft_mask) * img)


def _blur_resize_noise(x_bchw: Tensor, p: StageParams, size: tuple[int, int], antialias: bool,
                       gen: torch.Generator) -> Tensor:
    if p.kernel is not None:
        x_bchw = filter2d(x_bchw, make_kernel(p.kernel))
    x_bchw = _resize(x_bchw, size, p.resize_mode, antialias)
    return _add_noise(x_bchw, p.noise_kind, p.noise_level, p.gray_noise, gen)


def _degrade_unit(gt_bchw: Tensor, p: DegradeParams, config: DegradeConfig,
                  gen: torch.Generator) -> np.ndarray:
    """Degrades one frame (B = 1) or the whole clip (B = F) with one draw; returns (B, h, w, 3) uint8."""
    height, width = gt_bchw.shape[-2:]
    lr_size = (height // config.scale, width // config.scale)

    # 1. stage 1: blur, random resize (relative to the GT), noise, JPEG, video codec
    s1 = p.stage1
    size = (max(1, int(height * s1.resize_scale)), max(1, int(width * s1.resize_scale)))
    x = _blur_resize_noise(gt_bchw, s1, size, config.antialias, gen)
    x = _from_u8(compress_video(_to_u8(_jpeg(x, s1.jpeg_quality)), s1.codec, s1.bitrate))
    if p.stage2 is None:  # light profile: straight to the LR size
        return _to_u8(_resize(x, lr_size, p.final_mode, config.antialias))

    # 2. stage 2: blur, random resize relative to the LR size, noise. The official computes the width
    #    as W / s · s (≈ W, a bug that the final resize hides); we scale both sides by H/scale · s.
    s2 = p.stage2
    size = (max(1, int(height / config.scale * s2.resize_scale)),
            max(1, int(width / config.scale * s2.resize_scale)))
    x = _blur_resize_noise(x, s2, size, config.antialias, gen)

    # 3. final: [resize to LR + sinc, JPEG] or [JPEG, resize to LR + sinc], then the video codec again
    def resize_sinc(y: Tensor) -> Tensor:
        y = _resize(y, lr_size, p.final_mode, config.antialias)
        return y if p.final_sinc is None else filter2d(y, make_kernel(p.final_sinc))

    x = resize_sinc(_jpeg(x, s2.jpeg_quality)) if p.jpeg_first else _jpeg(resize_sinc(x), s2.jpeg_quality)
    return compress_video(_to_u8(x), s2.codec, s2.bitrate)


def degrade_clip(frames_fhwc_u8: np.ndarray, config: DegradeConfig,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A training pair from a GT clip (F, H, W, 3) uint8: (gt_fhwc_u8, lq_fhwc_u8).

    gt is the USM-sharpened clip, (F, H, W, 3): the official saves it as the GT and degrades it.
    lq is the degraded clip at the LR size (F, H // scale, W // scale, 3). The official bicubic-upsamples
    it back to (H, W) before saving; our trainer takes the LR (the model pipeline upsamples it itself),
    so that step is the separate `upscale_lq`. The same seed gives bit-identical outputs on CPU;
    `draw_params(config, seed, F)` lists the parameters used.
    """
    _check_seed(seed)
    if frames_fhwc_u8.dtype != np.uint8 or frames_fhwc_u8.ndim != 4 or frames_fhwc_u8.shape[-1] != 3:
        raise ValueError(
            f"frames must be (F, H, W, 3) uint8, got {frames_fhwc_u8.shape} {frames_fhwc_u8.dtype}")
    num_frames, height, width, _ = frames_fhwc_u8.shape
    if num_frames < 1 or height < config.scale or width < config.scale:
        raise ValueError(f"clip {frames_fhwc_u8.shape} is empty or smaller than scale={config.scale}")

    gt_fhwc_u8 = usm_sharpen(frames_fhwc_u8, config.usm_radius, config.usm_weight, config.usm_threshold)
    gt_fchw = _from_u8(gt_fhwc_u8)  # the degradation starts from the sharpened GT, as saved
    if config.per == "clip":
        params_rng, gen = _unit_generators(seed, 0)
        return gt_fhwc_u8, _degrade_unit(gt_fchw, _draw_params(params_rng, config), config, gen)
    lq = []
    for i in range(num_frames):  # official: an independent draw, and a one-frame video, per frame
        params_rng, gen = _unit_generators(seed, i)
        lq.append(_degrade_unit(gt_fchw[i : i + 1], _draw_params(params_rng, config), config, gen))
    return gt_fhwc_u8, np.concatenate(lq)


def upscale_lq(lq_fhwc_u8: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic ×scale of an LR clip, (F, h, w, 3) -> (F, h·scale, w·scale, 3) uint8: how the official
    stores its training LQ (at GT size). For comparisons with the GT and for trainers that expect it."""
    lq = _from_u8(lq_fhwc_u8)
    size = (lq.shape[-2] * scale, lq.shape[-1] * scale)
    return _to_u8(F.interpolate(lq, size=size, mode="bicubic", align_corners=False))
