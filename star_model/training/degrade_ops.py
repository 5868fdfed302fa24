"""The operators of the training degradation: blur kernels and filtering, resizing, noise, real JPEG
and video-codec round trips, and the unsharp mask the official applies to the GT."""

from __future__ import annotations

import io
import math

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image  # Pillow is a dependency of diffusers, which we require
from torch import Tensor

from star_model.training.degrade_config import MIXED_KINDS, KernelParams, NoiseKind, ResizeMode

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


def resize(x_bchw: Tensor, size: tuple[int, int], mode: ResizeMode, antialias: bool) -> Tensor:
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


def add_noise(x_bchw: Tensor, kind: NoiseKind, level: float, gray: bool, gen: torch.Generator) -> Tensor:
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


def to_u8(x_bchw: Tensor) -> np.ndarray:
    """(B, C, H, W) in 0..1 -> (B, H, W, C) uint8, clamped and rounded."""
    return (x_bchw.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def from_u8(frames_bhwc_u8: np.ndarray) -> Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames_bhwc_u8)).permute(0, 3, 1, 2).float() / 255


def jpeg_round_trip(x_bchw: Tensor, quality: int) -> Tensor:
    """Real JPEG (libjpeg through Pillow), 4:2:0 chroma. The official uses DiffJPEG, a differentiable
    emulation; both scale the standard IJG tables by quality (q < 50: 5000/q %, else 200 − 2q %), but a
    real codec rounds its input to 8 bits and entropy-codes, so the artefacts match a real file."""
    out = []
    for frame in to_u8(x_bchw):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=2)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return from_u8(np.stack(out))


def compress_video(frames_fhwc_u8: np.ndarray, codec: str, bitrate: int, crf: int | None = None) -> np.ndarray:
    """Encodes the frames as one yuv420p video at 1 frame/s (so `bitrate` is bits per frame) into an
    in-memory MP4 and decodes it back; (F, H, W, 3) uint8 in and out. `crf` (H.264 only): a constant
    rate factor instead of the bitrate. MPEG-2 knows only the broadcast frame rates: it is encoded at
    25 frames/s with 25 times the bitrate, the same bits per frame.

    Bit-identical for the same input: single-threaded, and for multi-frame H.264 without x264's
    macroblock tree. With mbtree on, a multi-frame encode of small frames (e.g. 4 frames of 48×6) varies
    from call to call within one process (measured, libx264 in PyAV 18); one-frame encodes, the official
    per-frame case, do not, so they keep x264's defaults. 4:2:0 needs even sizes: an odd frame is
    edge-padded by one row/column and cropped back (libx264 refuses odd sizes; the official's random
    resizes can make them).
    """
    f, h, w, _ = frames_fhwc_u8.shape
    padded = np.pad(frames_fhwc_u8, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    h264 = codec in ("libx264", "h264")
    if crf is not None and not h264:
        raise ValueError(f"crf is an H.264 setting; codec {codec!r} takes a bitrate")
    options = {"x264-params": "mbtree=0"} if f > 1 and h264 else {}
    if crf is not None:
        options["crf"] = str(crf)
    rate = 25 if codec == "mpeg2video" else 1
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = padded.shape[2], padded.shape[1]
        stream.pix_fmt = "yuv420p"
        if crf is None:
            stream.bit_rate = bitrate * rate
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

    img = from_u8(frames_fhwc_u8)  # (F, 3, H, W)
    residual = img - blur(img)
    soft_mask = blur((residual.abs() * 255 > threshold).float())
    sharp = (img + weight * residual).clamp(0, 1)
    return to_u8(soft_mask * sharp + (1 - soft_mask) * img)
