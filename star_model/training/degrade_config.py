"""What the training degradation may draw (blur, resize, noise, JPEG and codec ranges; the full, light
and mild profiles) and what one draw holds: the configuration side of `star_model.training.degrade`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

KernelKind = Literal[
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso", "sinc"]
ResizeMode = Literal["area", "bilinear", "bicubic"]
NoiseKind = Literal["gaussian", "poisson"]
Profile = Literal["full", "light"]
Per = Literal["frame", "clip"]
Compress = Literal["stage", "lr"]

MIXED_KINDS: tuple[KernelKind, ...] = (
    "iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")
# "h264" names no encoder: PyAV falls back to FFmpeg's default H.264 encoder, libx264 in PyAV's wheels.
# So drawing uniformly from the first three gives H.264 with p 2/3 and MPEG-4 part 2 with p 1/3, as the
# official does. MPEG-2 (ours, for the archive profile) is what tapes and broadcasts were digitised to.
VIDEO_CODECS = ("libx264", "h264", "mpeg4", "mpeg2video")
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
    # Ours (None: the official's fixed bitrate above). `crf`: H.264 encodes at a constant rate factor
    # drawn here, as archives and web video are encoded; `bits_per_pixel`: the other codecs' bitrate
    # drawn per pixel of the frame, so a small crop is compressed as hard as a whole SD frame would be
    # (MPEG-2 broadcast SD: about 0.4, i.e. 4 Mbit/s at 720x576, 25 frames/s).
    crf: tuple[int, int] | None = None
    bits_per_pixel: tuple[float, float] | None = None


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
    # Ours: "lr" = (light profile) stage 1's JPEG and video codec act on the LR clip after the final
    # resize, as an archive's own encode of its SD video; "stage" = inside stage 1, before the resize
    # (official order, whose downscale then smooths the compression artefacts away).
    compress: Compress = "stage"

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"DegradeConfig.scale={self.scale} must be >= 1")
        if self.profile not in ("full", "light"):
            raise ValueError(f"DegradeConfig.profile={self.profile!r}; use 'full' or 'light'")
        if self.per not in ("frame", "clip"):
            raise ValueError(f"DegradeConfig.per={self.per!r}; use 'frame' or 'clip'")
        if self.compress not in ("stage", "lr") or (self.compress == "lr" and self.profile != "light"):
            raise ValueError(f"DegradeConfig.compress={self.compress!r}; use 'stage', or 'lr' with the light profile")
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
    ranges.update({label: bounds for label, bounds in (("crf", stage.crf), ("bits_per_pixel", stage.bits_per_pixel))
                   if bounds is not None})
    for label, bounds in ranges.items():
        _check_range(f"{name}.{label}", bounds)
    if stage.crf is not None and not 0 <= stage.crf[0] <= stage.crf[1] <= 51:
        raise ValueError(f"{name}.crf={stage.crf} must lie in [0, 51]")
    if stage.bits_per_pixel is not None and stage.bits_per_pixel[0] <= 0:
        raise ValueError(f"{name}.bits_per_pixel={stage.bits_per_pixel} must be > 0")
    if blur.sigma[0] <= 0 or resize.down[0] <= 0 or min(blur.sinc_omega_small + blur.sinc_omega_large) <= 0:
        raise ValueError(f"{name}: blur sigma, sinc cut-offs and resize down factors must be > 0")
    if not 1 <= stage.jpeg_quality[0] <= stage.jpeg_quality[1] <= 100:
        raise ValueError(f"{name}.jpeg_quality={stage.jpeg_quality} must lie in [1, 100]")
    if not stage.codecs or any(c not in VIDEO_CODECS for c in stage.codecs):
        raise ValueError(f"{name}.codecs={stage.codecs}; choose from {VIDEO_CODECS}")
    _check_modes(f"{name}.resize.modes", resize.modes)


FULL = DegradeConfig()
LIGHT = DegradeConfig(profile="light")
# Ours, for nano's from-scratch training: the light profile at mild ranges, one draw per clip, and
# no USM sharpening of the GT, so the model learns to reach the real HR picture (what PSNR and SSIM
# against HR measure) from LR clips with some blur, noise and compression rather than from the
# heavy Real-ESRGAN mix a 4.8 M-parameter model trained for hours could not undo.
MILD = DegradeConfig(
    usm_weight=0.0, profile="light", per="clip",
    stage1=StageConfig(blur=BlurConfig(prob=0.5, sigma=(0.2, 1.2)),
                       resize=ResizeConfig(probs=(0.1, 0.3, 0.6), up=(1.0, 1.2), down=(0.6, 1.0)),
                       noise=NoiseConfig(gaussian_sigma=(0.5, 4.0), poisson_scale=(0.05, 0.5)),
                       jpeg_quality=(70, 95), bitrate=(100_000, 400_000)))
# Ours, for nano on archive footage: compression first, light blur and noise now and then, a downscale
# kernel that is not always bicubic, then JPEG and a real codec on the LR clip itself (H.264 at CRF 18-32,
# MPEG-2 and MPEG-4 part 2 at 0.3-1.5 bits per pixel), which is what `jobs/evaluate.py`'s compressed
# condition and real archives hold; the official order compresses before the downscale, which hides most
# of the artefacts. Narrow on purpose: with blur up to sigma 1.5 and noise up to 5 levels on every clip,
# 400 steps of nano-x2 fell from +0.37 to +0.07 dB over bicubic on clean crops and from +0.21 to +0.06
# at CRF 23 (a 4.8 M-parameter network asked to undo everything undoes nothing).
ARCHIVE = DegradeConfig(
    usm_weight=0.0, profile="light", per="clip", compress="lr",
    stage1=StageConfig(blur=BlurConfig(prob=0.3, sigma=(0.2, 1.0)),
                       resize=ResizeConfig(probs=(0.0, 0.2, 0.8), down=(0.8, 1.0)),
                       noise=NoiseConfig(gaussian_sigma=(0.5, 3.0), poisson_scale=(0.05, 0.5)),
                       jpeg_quality=(70, 98), codecs=("libx264", "h264", "mpeg2video", "mpeg4"),
                       crf=(18, 32), bits_per_pixel=(0.3, 1.5)))
PROFILES: dict[str, DegradeConfig] = {"full": FULL, "light": LIGHT, "mild": MILD, "archive": ARCHIVE}


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
    crf: int | None = None  # H.264 at this rate factor instead of `bitrate` (StageConfig.crf)
    bits_per_pixel: float | None = None  # the other codecs' rate, instead of `bitrate`


@dataclass(frozen=True)
class DegradeParams:
    """Everything drawn for one frame (per="frame") or one clip (per="clip")."""

    stage1: StageParams
    stage2: StageParams | None  # None for the light profile
    final_mode: ResizeMode  # the resize to (H/scale, W/scale)
    final_sinc: KernelParams | None = None
    jpeg_first: bool = False


