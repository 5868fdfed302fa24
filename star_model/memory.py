"""Memory planner: from the free device memory and the latent frame size, pick the temporal window
length and the spatial tile size of the denoiser so one guided forward fits; from the free host
memory and the output frame size, pick how many frames at a time go from pixels to latents and back
(pre-upscale and encode; decode, colour fix and uint8). Explicit settings win.

The sampler's estimate is analytical (bytes of the activations alive at the peak of one forward, per
latent pixel and frame): it errs high on purpose with a safety margin, and logs its numbers so an
operator can see and override the plan. `estimate_phases` gives every phase of a window's restore
(text, VAE encode, sampler, VAE decode) its device bytes; the VAE's activation constants are measured
on the meta device (`star_model/meta_run.py`), and `jobs/measure/gpu_dry_run.py` prints both side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch

from star_model.codec import CodecConfig
from star_model.denoiser_config import DenoiserConfig
from star_model.padding import min_padded_latent
from star_model.vae import VaeConfig

log = logging.getLogger(__name__)

SAFETY = 0.7  # fraction of the free memory the plan may use (allocator fragmentation, VAE, workspace)
OFFICIAL_LATENT_WINDOW = 32  # the official max_chunk_len: the temporal context the model was trained with
MIN_LATENT_WINDOW = 8
MIN_TILE = 32  # latent pixels; smaller tiles lose too much context for the spatial attention
# Host memory: float32 frames at output resolution exist one chunk at a time, at most this much of them
# per chunk whatever the free memory (1 GiB is 1.7 frames of 4K in the decode copies below).
HOST_CHUNK_BYTES = 2**30
# float32 (3, H, W) buffers alive per frame of a chunk at the peak: the pre-upscale and its padded copy
# on the way in; on the way out the decode, crop, colour fix and rounding (each torch op makes a new
# tensor, and the colour fixes keep their inputs alive while computing).
ENCODE_FLOAT_COPIES = 2
DECODE_FLOAT_COPIES = 6
PHASES = ("text", "vae encode", "sampler", "vae decode")
# The SVD VAE's activations at the peak of one piece (an encoder batch or a decode group, on one tile),
# in elements per pixel of the piece and frame, per channel of the VAE's first level. Measured on the
# meta device, linear in the piece's pixels from 256x256 to 768x768: 5.0 in the encoder (two ResNet
# blocks at full resolution: input, norm, convolution and skip alive at once) and 8.1 in the decoder
# (its last up block takes 256-channel upsampled features at full resolution); here 10% above.
VAE_ENCODE_COPIES = 5.5
VAE_DECODE_COPIES = 8.9
# float32 latent-sized tensors alive through the sampler beside one forward's activations: the LR
# latent, the SDEdit noise and start, the solver's state, denoised estimates and noise, the latent
# windows' and tiles' blend sums and weights.
SAMPLER_LATENT_COPIES = 8
# The text tower's activations for one prompt (77 tokens): a few MLP-wide (4 x width) float32 rows alive.
TEXT_TOKENS = 77
TEXT_MLP_COPIES = 10


@dataclass(frozen=True)
class MemoryPlan:
    latent_window: int  # latent frames per temporal window of the sampler
    tile: tuple[int, int] | None  # latent (h, w) of a spatial tile, None = the whole frame
    estimated_bytes: int  # activations of one guided forward of one window and tile
    budget_bytes: int

    def describe(self) -> str:
        tile = "whole frame" if self.tile is None else f"{self.tile[0]}x{self.tile[1]} latent tiles"
        return (f"latent window {self.latent_window} frames, {tile}, ~{self.estimated_bytes / 2**30:.2f} GiB of "
                f"{self.budget_bytes / 2**30:.2f} GiB budget")


def bytes_per_latent_pixel(cfg: DenoiserConfig, dtype: torch.dtype, guidance_batch: int = 2) -> float:
    """Peak activation bytes per latent pixel per frame of one forward (no grad).

    Alive at the decoder's finest level: the UNet's skips and the control residuals of every level
    (each level has a quarter of the pixels of the one above), the concatenated decoder input, and
    the spatial transformer's GEGLU intermediate (8C + 4C wide), with a 1.5x margin for temporaries.
    """
    skips = 0.0
    for level, channels in enumerate(cfg.level_channels):
        blocks = cfg.num_res_blocks + (1 if level < cfg.num_downsamples else 0)
        skips += blocks * channels / 4**level
    skips += cfg.dim  # input block 0
    finest = cfg.level_channels[0]
    working = 2 * finest + 12 * finest
    element = torch.finfo(dtype).bits // 8
    return 1.5 * element * guidance_batch * (2 * skips + working)


def estimate_bytes(cfg: DenoiserConfig, dtype: torch.dtype, latent_window: int, tile: tuple[int, int]) -> int:
    return int(bytes_per_latent_pixel(cfg, dtype) * latent_window * tile[0] * tile[1])


def plan_memory(cfg: DenoiserConfig, latent_hw: tuple[int, int], frames: int, free_bytes: int,
                dtype: torch.dtype, *, latent_window: int | None = None,
                tile: tuple[int, int] | None = None) -> MemoryPlan:
    """Choose the sampler's latent window and tile for frames of latent size `latent_hw` with `free_bytes`
    available.

    Prefers the longest latent window (up to the official 32 frames, the clip length if shorter), then the
    largest tile; shortens the window only when even a minimal tile does not fit. `latent_window` or `tile`
    given explicitly are kept as they are (and only logged if they look too big).
    """
    budget = int(free_bytes * SAFETY)
    h, w = latent_hw
    whole = (h, w)
    lengths = [latent_window] if latent_window else _latent_window_candidates(frames)
    for length in lengths:
        tiles = [tile] if tile else _tile_candidates(cfg, h, w)
        for candidate in tiles:
            need = estimate_bytes(cfg, dtype, length, candidate)
            if need <= budget or (latent_window and tile):
                plan = MemoryPlan(length, None if candidate == whole else candidate, need, budget)
                log.info("memory plan: %s", plan.describe())
                if need > budget:
                    log.warning("explicit latent window/tile need ~%.2f GiB, more than the %.2f GiB budget",
                                need / 2**30, budget / 2**30)
                return plan
    smallest = (lengths[-1], (tile or _tile_candidates(cfg, h, w)[-1]))
    need = estimate_bytes(cfg, dtype, smallest[0], smallest[1])
    raise ValueError(f"not enough device memory: even a {smallest[0]}-frame latent window of "
                     f"{smallest[1][0]}x{smallest[1][1]} latent tiles needs ~{need / 2**30:.2f} GiB and "
                     f"{budget / 2**30:.2f} GiB are available; free memory or set window/tile explicitly")


def estimate_phases(cfg: DenoiserConfig, vae: VaeConfig | CodecConfig, vae_dtype: torch.dtype, frames: int,
                    padded_hw: tuple[int, int], plan: MemoryPlan) -> dict[str, int]:
    """Device bytes above the weights at the peak of each phase (`PHASES`) of restoring `frames` frames
    whose padded output size is `padded_hw` pixels, with the sampler's `plan`.

    What stays on the device between phases counts in each: the float32 latents (being gathered during
    the encode, the LR latent from then on, the restored one during the decode).
    """
    f = vae.downsample
    height, width = padded_hw
    h, w = height // f, width // f
    latents = frames * vae.latent_channels * h * w * 4
    text = TEXT_TOKENS * 4 * cfg.context_dim * 4 * TEXT_MLP_COPIES  # the text tower runs in float32
    sampler = SAMPLER_LATENT_COPIES * latents + plan.estimated_bytes
    element = torch.finfo(vae_dtype).bits // 8
    if isinstance(vae, CodecConfig):  # pixel (un)shuffle: the frames and their float copy only
        encode = latents + 2 * frames * 3 * height * width * 4
        decode = 2 * latents + 2 * vae.decode_group_frames * 3 * height * width * 4
        return dict(zip(PHASES, (latents + text, encode, sampler, decode)))
    width_0 = vae.block_out_channels[0]
    # encode: one batch of frames on the device in the VAE's dtype, the mean and std it blends (float32),
    # the tile weights, and one tile's activations
    batch = min(vae.encode_batch_frames, frames)
    tiles = vae.encode_tiles(h, w)
    tile_px = max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in tiles) * f * f
    encode = (latents + batch * 3 * height * width * element + 3 * batch * vae.latent_channels * h * w * 4
              + len(tiles) * tile_px // (f * f) * 4 + int(VAE_ENCODE_COPIES * width_0 * batch * tile_px * element))
    # decode: the restored latents and a group's unscaled copy, the group's float32 frames being blended,
    # the pixel tile weights, one tile's float32 output and one tile's activations
    group = min(vae.decode_group_frames, frames)
    tiles = vae.decode_tiles(h, w)
    tile_px = max((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in tiles) * f * f
    decode = (2 * latents + group * 3 * height * width * 4 + len(tiles) * tile_px * 4 + group * 3 * tile_px * 4
              + int(VAE_DECODE_COPIES * width_0 * group * tile_px * element))
    return dict(zip(PHASES, (latents + text, encode, sampler, decode)))


@dataclass(frozen=True)
class HostPlan:
    encode_chunk: int  # frames per chunk into the VAE (whole encoder batches: results depend on the batch)
    decode_chunk: int  # frames per chunk out of it (whole decode groups: the decoder mixes a group's frames)
    estimated_bytes: int  # the window's host peak: uint8 input and output, float input, the larger chunk
    budget_bytes: int

    def describe(self) -> str:
        return (f"{self.encode_chunk} frames per encode chunk, {self.decode_chunk} per decode chunk, "
                f"~{self.estimated_bytes / 2**30:.2f} GiB of host memory for the window "
                f"({self.budget_bytes / 2**30:.2f} GiB budget)")


def plan_host(frames: int, input_hw: tuple[int, int], output_hw: tuple[int, int], encode_group: int,
              decode_group: int, free_bytes: int, *, chunk: int | None = None) -> HostPlan:
    """Frames per chunk for a window of `frames` frames from `input_hw` to `output_hw` (padded) pixels:
    as many whole groups as fit in `HOST_CHUNK_BYTES` (less when the host has less free), at least one
    group. An explicit `chunk` is rounded up to whole groups.

    Raises when even one group does not fit beside the window's uint8 frames, with what to change.
    """
    frame_bytes = 3 * output_hw[0] * output_hw[1] * 4
    budget = int(free_bytes * SAFETY)

    def frames_per_chunk(copies: int, group: int) -> int:
        count = chunk or min(HOST_CHUNK_BYTES, budget) // (copies * frame_bytes)
        return min(max(1, -(-count // group)) * group, -(-frames // group) * group)

    encode_chunk = frames_per_chunk(ENCODE_FLOAT_COPIES, encode_group)
    decode_chunk = frames_per_chunk(DECODE_FLOAT_COPIES, decode_group)
    # uint8 in and out, the float32 LR frames, and the larger chunk of float32 buffers at output size
    fixed = frames * 3 * (input_hw[0] * input_hw[1] * 5 + output_hw[0] * output_hw[1])
    need = fixed + max(encode_chunk * ENCODE_FLOAT_COPIES, decode_chunk * DECODE_FLOAT_COPIES) * frame_bytes
    plan = HostPlan(encode_chunk, decode_chunk, need, budget)
    if need > budget:
        raise ValueError(f"not enough host memory: a window of {frames} frames at {output_hw[1]}x{output_hw[0]} "
                         f"needs ~{need / 2**30:.2f} GiB and {budget / 2**30:.2f} GiB are available; use "
                         f"shorter windows or a smaller scale, or free memory")
    log.info("host plan: %s", plan.describe())
    return plan


def _latent_window_candidates(frames: int) -> list[int]:
    longest = min(frames, OFFICIAL_LATENT_WINDOW)
    candidates = [longest]
    while candidates[-1] // 2 >= MIN_LATENT_WINDOW:
        candidates.append(candidates[-1] // 2)
    return candidates


def _tile_candidates(cfg: DenoiserConfig, h: int, w: int) -> list[tuple[int, int]]:
    """The whole frame, then square-ish tiles halving in size, each a size the network accepts."""
    candidates = [(h, w)]
    side = max(h, w)
    while side // 2 >= MIN_TILE:
        side //= 2
        th, tw = min_padded_latent(min(h, side), min(w, side), cfg.num_downsamples)
        if (th, tw) != candidates[-1]:
            candidates.append((th, tw))
    return candidates


def free_device_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device; on CPU, the available system memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return free_host_memory()


def free_host_memory() -> int:
    """Bytes of system memory available to this process without swapping."""
    return int(psutil.virtual_memory().available)
