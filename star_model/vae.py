"""The VAE of STAR: diffusers' `AutoencoderKLTemporalDecoder` (the Stable Video Diffusion VAE: SD-style
per-frame 2D encoder, temporal decoder), run on bounded pieces of a video.

Frames are (F, 3, H, W) in [-1, 1], one video, frame-major; latents are (F, 4, H/8, W/8), already
multiplied by the scaling factor (0.18215). The caller rearranges them to the denoiser's
(B, C, F, H, W). H and W must be multiples of 8 (the restore step pads the frames before encoding).

Memory is bounded in time and in space: frames are encoded a few at a time and decoded in groups of 3
(the official group), and both directions can work on spatial tiles that overlap and are blended
with linear ramps, so the activations never hold more than one tile. The official code has no
spatial tiling; with tiling off (the default of the "official" preset) we compute what it computes.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from star_model.denoiser_config import GROUP_NORM_GROUPS  # diffusers hard-codes 32 groups in this VAE too
from star_model.tiles import Tile, plan_tiles, scale_tiles, tile_weights
from star_model.transfer import to_device, wait_for_copies

if TYPE_CHECKING:  # diffusers costs seconds to import: only where a VAE is built (nano and bicubic never)
    from diffusers import AutoencoderKLTemporalDecoder

_VAE_CLASS = "AutoencoderKLTemporalDecoder"



@dataclass(frozen=True)
class VaeConfig:
    """The SVD VAE's shape, and how frames are pushed through it. Defaults are the official ones.

    The shape fields build random weights (`build_vae`) and are checked against a loaded folder.
    Tile sizes: `None` = the whole frame in one piece (the official behaviour). Encode tiles are cut
    in pixel space and blended in latent space; decode tiles are cut in latent space and blended in
    pixel space. Overlaps are where two tiles are cross-faded.
    """

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    scaling_factor: float = 0.18215  # only for `build_vae`; a loaded model's own config value is used

    encode_batch_frames: int = 4  # frames per encoder call (the official encodes 1; results are per frame)
    encode_tile_px: int | None = None
    encode_overlap_px: int = 128
    decode_group_frames: int = 3  # the temporal decoder mixes frames within a group only (official: 3)
    decode_tile_latent: int | None = None
    decode_overlap_latent: int = 16

    def __post_init__(self) -> None:
        for width in self.block_out_channels:
            if width % GROUP_NORM_GROUPS:
                raise ValueError(f"VaeConfig.block_out_channels={self.block_out_channels}: every width must "
                                 f"be a multiple of the {GROUP_NORM_GROUPS} GroupNorm groups")
        for name in ("encode_batch_frames", "decode_group_frames", "layers_per_block", "latent_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"VaeConfig.{name}={getattr(self, name)} must be >= 1")
        f = self.downsample
        if self.encode_tile_px is not None:
            if self.encode_tile_px % f or self.encode_overlap_px % f:
                raise ValueError(f"VaeConfig.encode_tile_px={self.encode_tile_px} and encode_overlap_px="
                                 f"{self.encode_overlap_px} must be multiples of the downsampling factor {f}")
            if not 0 <= self.encode_overlap_px < self.encode_tile_px:
                raise ValueError(f"VaeConfig.encode_overlap_px={self.encode_overlap_px} must be in "
                                 f"[0, encode_tile_px={self.encode_tile_px})")
        tile, overlap = self.decode_tile_latent, self.decode_overlap_latent
        if tile is not None and not 0 <= overlap < tile:
            raise ValueError(f"VaeConfig.decode_overlap_latent={self.decode_overlap_latent} must be in "
                             f"[0, decode_tile_latent={self.decode_tile_latent})")

    @property
    def downsample(self) -> int:
        """Pixels per latent pixel along each axis: one halving per encoder level after the first."""
        return 2 ** (len(self.block_out_channels) - 1)

    def encode_tiles(self, h: int, w: int) -> list[Tile]:
        """The encoder's tiles of an (h, w) latent frame, in latent pixels (cut 8x larger in pixels)."""
        f = self.downsample
        return _latent_tiles(h, w, self.encode_tile_px and self.encode_tile_px // f, self.encode_overlap_px // f)

    def decode_tiles(self, h: int, w: int) -> list[Tile]:
        """The decoder's tiles of an (h, w) latent frame."""
        return _latent_tiles(h, w, self.decode_tile_latent, self.decode_overlap_latent)


OFFICIAL = VaeConfig()
# Ours for large frames: 768 px encode tiles and 96-latent (768 px) decode tiles, 128 px cross-fades.
# Big tiles keep each tile's GroupNorm statistics and mid-block attention close to the whole frame's.
TILED = VaeConfig(encode_tile_px=768, encode_overlap_px=128, decode_tile_latent=96, decode_overlap_latent=16)
# Four levels so it still downsamples by 8, as the real one; widths are the GroupNorm minimum.
TINY = VaeConfig(block_out_channels=(32, 32, 32, 32), layers_per_block=1)


def build_vae(config: VaeConfig, seed: int = 0) -> AutoencoderKLTemporalDecoder:
    """An AutoencoderKLTemporalDecoder of `config`'s shape with random weights (seeded; the global RNG is
    left untouched), fp32, eval."""
    from diffusers import AutoencoderKLTemporalDecoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLTemporalDecoder(
            down_block_types=("DownEncoderBlock2D",) * len(config.block_out_channels),
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            scaling_factor=config.scaling_factor,
        )
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# The VAE on videos


class VideoVae:
    """Encode frames to scaled latents and decode them back, in bounded pieces.

    Computes in the model's dtype on the model's device and blends and returns fp32. The official code
    holds fp32 weights, encodes in fp32 and decodes under fp16 autocast (GroupNorm stays fp32 there);
    bf16 weights are the safe low-precision choice here, as the SVD config sets force_upcast (fp16
    activations can overflow at large sizes).
    """

    def __init__(self, model: AutoencoderKLTemporalDecoder, config: VaeConfig = OFFICIAL) -> None:
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.scaling_factor = float(model.config.scaling_factor)  # 0.18215 for the SVD VAE
        self.latent_channels = int(model.config.latent_channels)
        self.downsample = 2 ** (len(model.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # no_grad, not inference_mode: latents are training inputs too, and inference tensors cannot be
    # saved for backward.
    @torch.no_grad()
    def encode(self, frames: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """(F, 3, H, W) in [-1, 1] -> (F, C, H/8, W/8) fp32 latents x scaling factor, on the model's device.

        `sample=True` draws from the posterior as the official code does (`latent_dist.sample()`);
        the noise is drawn frame by frame from `generator` (on the generator's device, in fp32), so it
        depends on the seed only, not on the batch size, the tiling or the model's device and dtype.
        `sample=False` returns the posterior mean.
        """
        if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
            raise ValueError(f"frames must be float (F, 3, H, W) in [-1, 1], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        num_frames, _, height, width = frames.shape
        f = self.downsample
        if height % f or width % f:
            raise ValueError(f"frame size {height}x{width} is not a multiple of {f}; pad the frames to "
                             f"{math.ceil(height / f) * f}x{math.ceil(width / f) * f} first and crop after "
                             "decoding")
        cfg = self.config
        h, w = height // f, width // f
        tiles = cfg.encode_tiles(h, w)
        weights = [to_device(weight, self.device) for weight in tile_weights(tiles, h, w)]
        latents = []
        for first in range(0, num_frames, cfg.encode_batch_frames):
            # 1. a bounded chunk of frames, in the model's dtype on its device; (n, 3, H, W)
            x = to_device(frames[first:first + cfg.encode_batch_frames], self.device, self.dtype)
            n = x.shape[0]
            # 2. posterior mean and std per tile, blended in latent space; (n, C, h, w) fp32
            mean = torch.zeros(n, self.latent_channels, h, w, device=self.device)
            std = torch.zeros_like(mean)
            for (y0, y1, x0, x1), (py0, py1, px0, px1), weight in zip(tiles, scale_tiles(tiles, f), weights):
                dist = self.model.encode(x[:, :, py0:py1, px0:px1]).latent_dist
                mean[:, :, y0:y1, x0:x1] += dist.mean.float() * weight
                std[:, :, y0:y1, x0:x1] += dist.std.float() * weight
            # 3. one sample for the whole frame (blending sampled tiles would shrink the noise in the
            #    overlaps), then the scaling factor
            z = mean
            if sample:
                noise = torch.cat([self._noise(mean.shape[1:], generator) for _ in range(n)])
                z = mean + std * noise
            latents.append(z * self.scaling_factor)
        return torch.cat(latents)

    def _noise(self, shape: torch.Size, generator: torch.Generator | None) -> Tensor:
        device = self.device if generator is None else generator.device
        noise = torch.randn((1, *shape), generator=generator, device=device, dtype=torch.float32)
        return to_device(noise, self.device)

    def decode(self, latents: Tensor, out_device: str | torch.device | None = None,
               grad: bool = False) -> Tensor:
        """(F, C, h, w) scaled latents -> (F, 3, 8h, 8w) fp32 frames, nominally [-1, 1], not clamped.

        Frames are decoded in independent groups of `decode_group_frames` (the last group may be
        shorter, decoded with its own `num_frames`, as officially). Each finished group moves to
        `out_device` (default: the latents' device), so the model's device holds one group only.
        `grad=True` keeps the graph (the DF loss back-propagates through the frozen decoder).
        """
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (F, {self.latent_channels}, h, w), "
                             f"got {tuple(latents.shape)}")
        num_frames, _, h, w = latents.shape
        cfg, f = self.config, self.downsample
        out_device = latents.device if out_device is None else torch.device(out_device)
        tiles = cfg.decode_tiles(h, w)
        pixel_tiles = scale_tiles(tiles, f)  # blended at pixel resolution: ramps 8x finer
        weights = [to_device(weight, self.device) for weight in tile_weights(pixel_tiles, h * f, w * f)]
        groups = []
        with nullcontext() if grad else torch.no_grad():
            for first in range(0, num_frames, cfg.decode_group_frames):
                # 1. one group of latents, unscaled, in the model's dtype; (n, C, h, w)
                z = latents[first:first + cfg.decode_group_frames] / self.scaling_factor
                z = to_device(z, self.device, self.dtype)
                n = z.shape[0]
                # 2. decode every tile with the whole group (the decoder mixes the group's frames),
                #    blend in pixel space; (n, 3, 8h, 8w) fp32
                frames = torch.zeros(n, 3, h * f, w * f, device=self.device)
                for (y0, y1, x0, x1), (py0, py1, px0, px1), weight in zip(tiles, pixel_tiles, weights):
                    tile = self.model.decode(z[:, :, y0:y1, x0:x1], num_frames=n).sample
                    frames[:, :, py0:py1, px0:px1] += tile.float() * weight
                groups.append(to_device(frames, out_device))
        wait_for_copies(self.device)  # the host copies are read from here on
        return torch.cat(groups)


def _latent_tiles(h: int, w: int, tile: int | None, overlap: int) -> list[Tile]:
    """Square latent tiles of `tile` (None: the whole frame), spread evenly (`plan_tiles`)."""
    size_h, size_w = (h, w) if tile is None else (min(tile, h), min(tile, w))
    return plan_tiles(h, w, size_h, size_w, min(overlap, size_h - 1, size_w - 1))


# --------------------------------------------------------------------------------------------------
# Loading


def _vae_folder(folder: Path) -> Path:
    """`folder` itself if it holds the VAE, else its `vae/` subfolder (the SVD repository layout)."""
    for candidate in (folder, folder / "vae"):
        config = candidate / "config.json"
        if config.exists() and json.loads(config.read_text()).get("_class_name") == _VAE_CLASS:
            return candidate
    raise ValueError(f"no AutoencoderKLTemporalDecoder config.json in {folder} or {folder / 'vae'}; "
                     "download stabilityai/stable-video-diffusion-img2vid (subfolder vae) there first")


def _weights_variant(folder: Path) -> str | None:
    """None if full-precision weights are there, "fp16" if only the fp16 variant is."""
    for suffix in ("safetensors", "bin"):
        if (folder / f"diffusion_pytorch_model.{suffix}").exists():
            return None
    for suffix in ("safetensors", "bin"):
        if (folder / f"diffusion_pytorch_model.fp16.{suffix}").exists():
            return "fp16"
    raise ValueError(f"no diffusion_pytorch_model[.fp16].safetensors/.bin weights in {folder}")


def load_vae(folder: str | Path, config: VaeConfig = OFFICIAL, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, variant: str | None = "auto") -> VideoVae:
    """Load the SVD VAE from a local folder (the repository root or its `vae/` folder), never the network.

    `variant="auto"` takes the full-precision file if present, else the fp16 variant (the official code
    loads `variant="fp16"` and holds the weights in fp32, which `dtype=torch.float32` reproduces).
    """
    from diffusers import AutoencoderKLTemporalDecoder

    folder = _vae_folder(Path(folder))
    if variant == "auto":
        variant = _weights_variant(folder)
    model = AutoencoderKLTemporalDecoder.from_pretrained(folder, variant=variant, torch_dtype=dtype,
                                                         local_files_only=True)
    loaded = (tuple(model.config.block_out_channels), model.config.layers_per_block,
              model.config.latent_channels)
    expected = (tuple(config.block_out_channels), config.layers_per_block, config.latent_channels)
    if loaded != expected:
        raise ValueError(f"{folder} holds a VAE with (block_out_channels, layers_per_block, latent_channels) "
                         f"= {loaded}, the config expects {expected}; point at the SVD VAE or pick the "
                         "matching preset")
    return VideoVae(model.to(device), config)
