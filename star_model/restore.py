"""Frames in, restored frames out: bilinear (or bicubic) pre-upscale, padding, VAE encode, SDEdit start, guided
DPM-Solver++(2M) SDE over temporal windows and spatial latent tiles, VAE decode, colour fix, uint8.

`RestoreConfig()` is our default; `RestoreConfig.official()` reproduces the official inference
choices (canvas padding to >= 720x1280, hard-cut windows of 32, no tiling, truncation to uint8).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from star_model.colorfix import adain_color_fix, wavelet_color_fix
from star_model.diffusion import guided_x0
from star_model.memory import (OFFICIAL_LATENT_WINDOW, HostPlan, MemoryPlan, free_device_memory, free_host_memory,
                               plan_host, plan_memory)
from star_model.padding import latent_size_ok, minimal_pad, official_pad_to_fit
from star_model.sampler import sample_dpmpp_2m_sde, sdedit_start, seeded_noise
from star_model.schedule import NoiseSchedule, build_schedule, solver_sigmas
from star_model.text import TextEncoder
from star_model.tiles import Tile, plan_tiles, tiled_denoiser
from star_model.transfer import to_device
from star_model.unet import StarDenoiser
from star_model.vae import VideoVae
from star_model.latent_windows import (LatentWindowDenoiser, Span, latent_window_denoiser, official_chunks,
                                       plan_spans)

log = logging.getLogger(__name__)


@functools.cache
def _choices(config: type) -> dict[str, tuple[str, ...]]:
    """{field: its allowed values} for every Literal field of a config dataclass."""
    hints = typing.get_type_hints(config)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(config)
            if typing.get_origin(hints[f.name]) is Literal}


@dataclass(frozen=True)
class RestoreConfig:
    """How a clip is restored. Window and tile sizes are in latent units (frames, latent pixels)."""

    scale: int = 4
    # How LR frames are brought to the output size before encoding: bilinear (official), or bicubic
    # clamped to [-1, 1] (ours, nano: its network predicts x0 as this picture plus a residual)
    upscale: Literal["bilinear", "bicubic"] = "bilinear"
    solver_mode: Literal["fast", "normal"] = "fast"  # fast: the official 14 evaluations
    steps: int = 15  # evaluations in "normal" mode (fewer = faster)
    t_start: int = 899  # SDEdit start (official total_noise_levels 900)
    # The SDEdit start noise: independent per frame (official), or one noise field for every frame of
    # the clip (ours, for nano: what the network fails to cancel of it then stays put instead of
    # flickering from frame to frame)
    start_noise: Literal["per_frame", "shared"] = "per_frame"
    guide_scale: float = 7.5
    guide_rescale: float = 0.2
    padding: Literal["minimal", "official"] = "minimal"
    # The sampler's temporal window, in latent frames (not the job's window of video frames, which is the
    # clip this restorer is given). The field names stay `window`: they are part of the job's settings key.
    window: int | None = None  # None: the memory planner decides (at most 32)
    window_overlap: int | None = None  # None: half the latent window (official)
    temporal_merge: Literal["weighted", "hard_cut"] = "weighted"
    official_chunking: bool = False  # windows by the official make_chunks rule (only with hard_cut)
    tile: tuple[int, int] | None = None  # None: the memory planner decides (whole frame if it fits)
    tile_overlap: int = 16
    # Frames per chunk from pixels to latents and back (None: the memory planner decides, within a
    # fixed host-memory bound); rounded up to whole VAE batches and groups. Any value gives the same output.
    host_chunk_frames: int | None = None
    color_fix: Literal["adain", "wavelet", "none"] = "adain"
    rounding: Literal["round", "truncate"] = "round"
    seed: int = 666  # official setup_seed(666)

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"scale={self.scale} must be an integer >= 1")
        if not 0 < self.t_start < 1000:
            raise ValueError(f"t_start={self.t_start} must be in 1..999")
        if self.solver_mode == "normal" and self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window={self.window} must be >= 1 frame")
        if self.host_chunk_frames is not None and self.host_chunk_frames < 1:
            raise ValueError(f"host_chunk_frames={self.host_chunk_frames} must be >= 1 frame")
        if self.official_chunking and self.temporal_merge != "hard_cut":
            raise ValueError("official_chunking needs temporal_merge='hard_cut'")
        for name, allowed in _choices(type(self)).items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")

    @classmethod
    def official(cls, **overrides) -> "RestoreConfig":
        """The official inference: canvas padding, hard-cut windows of 32, whole frames, truncation."""
        values = dict(padding="official", window=OFFICIAL_LATENT_WINDOW, temporal_merge="hard_cut",
                      official_chunking=True, rounding="truncate")
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "RestoreConfig":
        return dataclasses.replace(self, **changes)


class StarRestorer:
    """uint8 frames (F, H, W, 3) + prompt -> uint8 frames (F, s*H, s*W, 3), with loaded models (uint16
    in, uint16 out: deep-colour sources keep their precision)."""

    def __init__(self, denoiser: StarDenoiser, text: TextEncoder, vae: VideoVae,
                 config: RestoreConfig = RestoreConfig(), schedule: NoiseSchedule | None = None) -> None:
        if text.width != denoiser.cfg.context_dim:
            raise ValueError(f"text encoder width {text.width} != denoiser context_dim {denoiser.cfg.context_dim}")
        self.denoiser = denoiser
        self.text = text
        self.vae = vae
        self.config = config
        self.schedule = schedule or build_schedule()
        self.device = next(denoiser.parameters()).device
        self.dtype = next(denoiser.parameters()).dtype
        self.last_plan: MemoryPlan | None = None
        self.last_host_plan: HostPlan | None = None

    @torch.inference_mode()
    def __call__(self, frames_fhwc_u8: np.ndarray | Tensor, prompt: str = "", seed: int | None = None) -> np.ndarray:
        cfg = self.config
        # Frames at output resolution stay on the CPU and exist in float32 one chunk of frames at a
        # time (32 frames of 1080p x4 are 12.7 GB per float32 copy); the VAE moves bounded groups and
        # tiles of a chunk to the device, so device memory is bounded by the tile sizes.
        deep = isinstance(frames_fhwc_u8, np.ndarray) and frames_fhwc_u8.dtype == np.uint16
        lr = to_signed_unit(frames_fhwc_u8)  # (F, 3, h, w) in [-1, 1], CPU
        num_frames, _, height, width = lr.shape
        out_h, out_w = height * cfg.scale, width * cfg.scale
        seed = cfg.seed if seed is None else seed
        padding = self._padding(out_h, out_w)  # (left, right, top, bottom)
        left, right, top, bottom = padding
        # The codec has no encoder batches (frame by frame, exact); the VAE's results depend on them.
        encode_group = getattr(self.vae.config, "encode_batch_frames", 1)
        host = plan_host(num_frames, (height, width), (out_h + top + bottom, out_w + left + right), encode_group,
                         self.vae.config.decode_group_frames, free_host_memory(), chunk=cfg.host_chunk_frames)
        self.last_host_plan = host

        # 1. per chunk: pre-upscale, padding and per-frame sampled VAE encode; one generator
        #    for the clip, drawn frame by frame, so the chunking does not change the noise
        generator = torch.Generator().manual_seed(seed)
        z_lr = torch.cat([self.vae.encode(self._upscale(lr[frames], padding), generator=generator)
                          for frames in _chunks(num_frames, host.encode_chunk)])  # (F, 4, h', w')
        z_lr = z_lr.permute(1, 0, 2, 3).unsqueeze(0).to(self.device, torch.float32)  # (1, 4, F, h', w')

        # 2. text contexts (computed once per prompt by the encoder's cache), (1, 77, ctx)
        y_cond, y_uncond = (to_device(y, self.device, self.dtype) for y in self.text.context_for(prompt))

        # 3. latent windows and spatial tiles from the memory plan (explicit settings win)
        latent_windows, tiles = self._plan(z_lr.shape)

        # 4. SDEdit start from the LR latent at t_start, then the guided SDE sampler
        noise_shape = z_lr.shape if cfg.start_noise == "per_frame" else (*z_lr.shape[:2], 1, *z_lr.shape[3:])
        eps = torch.randn(noise_shape, generator=torch.Generator().manual_seed(seed + 1)).expand(z_lr.shape)
        eps = to_device(eps, self.device)
        x_start = sdedit_start(self.schedule, z_lr, eps, cfg.t_start)
        sigmas = solver_sigmas(self.schedule, cfg.solver_mode, cfg.steps, t_max=cfg.t_start)

        denoise_latent_window = self._latent_window_denoiser(z_lr, y_cond, y_uncond, tiles)
        denoise = latent_window_denoiser(denoise_latent_window, latent_windows, cfg.temporal_merge)
        z0 = sample_dpmpp_2m_sde(denoise, x_start, sigmas, self.schedule, seeded_noise(seed + 2))

        # 5. per chunk (whole decode groups): decode, crop, colour fix, uint8 (uint16 for deep colour)
        latents = z0[0].permute(1, 0, 2, 3)  # (F, 4, h', w')
        video_fhwc = np.empty((num_frames, out_h, out_w, 3), np.uint16 if deep else np.uint8)
        for frames in _chunks(num_frames, host.decode_chunk):
            video_fhwc[frames] = self._to_frames(latents[frames], lr[frames], (top, left), deep)
        return video_fhwc

    # -- helpers -----------------------------------------------------------------------------------

    def _padding(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) padding of an (h, w) output frame for the VAE and the network."""
        if self.config.padding == "official":
            pads = official_pad_to_fit(h, w)  # (left, right, top, bottom)
            f = self.vae.downsample
            lat_h, lat_w = (h + pads[2] + pads[3]) // f, (w + pads[0] + pads[1]) // f
            if not latent_size_ok(lat_h, lat_w, self.denoiser.cfg.num_downsamples):
                raise ValueError(f"official padding gives latent {lat_h}x{lat_w}, which this network "
                                 f"cannot take; use padding='minimal'")
            return pads
        return minimal_pad(h, w, self.denoiser.cfg.num_downsamples, self.vae.downsample)

    def _upscale(self, lr: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
        """(f, 3, h, w) in [-1, 1] -> (f, 3, H', W'): `pre_upscale` to the output size, then padded."""
        up = pre_upscale(lr, self.config.scale, self.config.upscale)
        if self.config.padding == "official":
            # The official pads with +1 (white) in [-1, 1]; a canvas < 720x1280 is always padded.
            return F.pad(up, padding, value=1.0)
        # Ours: pad bottom/right by replicating the border, so no white band feeds the attention or
        # the GroupNorm statistics (the official's +1 padding does).
        return F.pad(up, padding, mode="replicate")

    def _to_frames(self, latents: Tensor, lr: Tensor, offset: tuple[int, int], deep: bool) -> np.ndarray:
        """Latents (f, 4, h', w') of a chunk -> uint8 (f, H, W, 3), uint16 when `deep`: decode, crop the
        padding, clamp, colour fix against the chunk's LR frames (f, 3, h, w), round or truncate."""
        cfg = self.config
        out_h, out_w = lr.shape[2] * cfg.scale, lr.shape[3] * cfg.scale
        top, left = offset
        pixels = self.vae.decode(latents, out_device="cpu").float()  # (f, 3, H', W')
        pixels = pixels[:, :, top:top + out_h, left:left + out_w].clamp(-1, 1)
        video = (pixels * 0.5 + 0.5).permute(0, 2, 3, 1) * 255  # (f, H, W, 3) in 0..255
        del pixels
        if cfg.color_fix == "adain":
            video = adain_color_fix(video, lr.float())
        elif cfg.color_fix == "wavelet":
            source = F.interpolate(lr.float(), size=(out_h, out_w), mode="bilinear", align_corners=False)
            video = wavelet_color_fix(video, source)
        return quantize_frames(video, deep, cfg.rounding)

    def _plan(self, latent_shape: torch.Size) -> tuple[list[Span], list[Tile]]:
        cfg = self.config
        _, _, num_frames, lat_h, lat_w = latent_shape
        latent_window, tile = cfg.window, cfg.tile
        if latent_window is None or tile is None:
            plan = plan_memory(self.denoiser.cfg, (lat_h, lat_w), num_frames, free_device_memory(self.device),
                               self.dtype, latent_window=latent_window, tile=tile)
            self.last_plan = plan
            latent_window = latent_window or plan.latent_window
            tile = tile or plan.tile
        if cfg.official_chunking:
            windows = official_chunks(num_frames, latent_window)  # one window when F <= latent_window
        else:
            overlap = cfg.window_overlap if cfg.window_overlap is not None else latent_window // 2
            windows = plan_spans(num_frames, latent_window, min(overlap, latent_window - 1))
        tile_h, tile_w = (min(tile[0], lat_h), min(tile[1], lat_w)) if tile else (lat_h, lat_w)
        tiles = plan_tiles(lat_h, lat_w, tile_h, tile_w, min(cfg.tile_overlap, tile_h - 1, tile_w - 1),
                           self.denoiser.cfg.num_downsamples)
        log.info("restoring %d latent frames of %dx%d in %d latent window(s) x %d tile(s)",
                 num_frames, lat_h, lat_w, len(windows), len(tiles))
        return windows, tiles

    def _latent_window_denoiser(self, z_lr: Tensor, y_cond: Tensor, y_uncond: Tensor,
                                tiles: list[Tile]) -> LatentWindowDenoiser:
        """Guided x0 of one temporal window, tile by tile with feathered blending when tiled."""
        cfg = self.config

        def denoise_latent_window(xt: Tensor, t: Tensor, frames: slice) -> Tensor:
            hint = z_lr[:, :, frames]  # (1, 4, f, H, W): the clean LR latent of this window

            def denoise_tile(xt_tile: Tensor, t: Tensor, tile: Tile) -> Tensor:
                y0, y1, x0, x1 = tile
                return guided_x0(self.denoiser, self.schedule, xt_tile, t, y_cond, y_uncond,
                                 hint[..., y0:y1, x0:x1], cfg.guide_scale, cfg.guide_rescale)

            if len(tiles) == 1:  # the whole frame: no blending pass
                return denoise_tile(xt, t, tiles[0])
            return tiled_denoiser(denoise_tile, tiles)(xt, t)

        return denoise_latent_window


def pre_upscale(lr: Tensor, scale: int, mode: str = "bilinear") -> Tensor:
    """(N, 3, h, w) in [-1, 1] -> (N, 3, scale·h, scale·w): F.interpolate without antialias (official,
    bilinear), or bicubic clamped back to [-1, 1]. The restorer and the trainer both call it."""
    up = F.interpolate(lr, size=(lr.shape[2] * scale, lr.shape[3] * scale), mode=mode, align_corners=False)
    return up.clamp(-1, 1) if mode == "bicubic" else up


def quantize_frames(video: Tensor, deep: bool, rounding: str) -> np.ndarray:
    """Float frames (F, H, W, 3) in 0..255 -> uint8, or uint16 when `deep` (16-bit in, 16-bit out: the float
    result never passes through 8 bits; ours), rounded or truncated (official: astype(uint8))."""
    if deep:
        video = (video * 257.0).clamp(0, 65535)
        video = video.round() if rounding == "round" else video.floor()
        return video.to(torch.int32).numpy().astype(np.uint16)
    video = video.clamp(0, 255)
    video = video.round() if rounding == "round" else video.floor()
    return video.to(torch.uint8).numpy()


def _chunks(num_frames: int, size: int) -> list[slice]:
    return [slice(first, first + size) for first in range(0, num_frames, size)]


def to_signed_unit(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [-1, 1] (official: (x/255 - 0.5)/0.5); uint16
    frames (a 10- or 12-bit source, scaled to 16 bits) likewise over 0..65535 (ours: official is 8-bit only)."""
    deep = isinstance(frames, np.ndarray) and frames.dtype == np.uint16
    full = 65535.0 if deep else 255.0
    # torch has few uint16 kernels: int32 holds the values exactly
    tensor = torch.as_tensor(np.ascontiguousarray(frames.astype(np.int32) if deep else frames)
                             if isinstance(frames, np.ndarray) else frames)
    if tensor.dtype != (torch.int32 if deep else torch.uint8) or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected uint8 or uint16 frames (F, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    if min(tensor.shape[:3]) < 1:
        raise ValueError(f"empty clip: shape {tuple(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2).float().div(full / 2).sub(1.0)
