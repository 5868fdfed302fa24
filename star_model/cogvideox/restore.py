"""The CogVideoX STAR restorer: uint8 (or uint16) frames (F, H, W, 3) + prompt -> frames (F, s·H, s·W, 3),
with the same temporal windows, spatial tiles and blending as the I2VGen-XL restorer (latent_windows.py,
tiles.py) and its own memory plan (cogvideox/memory.py).

Where it follows and where it differs from the official `sample_sr.py`:
* follows: bicubic x4 pre-upscale, sampled VAE encode x0.7, pure-noise start, 50 VP-SDE DPM++(2M) steps
  with DynamicCFG 6 and an all-zero uncond embedding, decode /0.7, AdaIN colour fix;
* differs: any size (frames padded by replication to a multiple of 16 pixels; the official takes 480x720
  only), any frame count (padded to 1 + 4k with the last frame; the official takes 25), windows of 13
  latent frames blended, tiles of at most the trained latent size, the colour fix against the LR input
  (the released script uses the ground truth, a test-harness shortcut), bicubic clamped to [-1, 1].
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from star_model.cogvideox.components import SPATIAL_COMPRESSION, CogVae, T5Text
from star_model.cogvideox.guidance import guide, x0_pair
from star_model.cogvideox.memory import plan_memory
from star_model.cogvideox.network import CogStarNetwork
from star_model.cogvideox.sampler import denoiser_table, dynamic_cfg_scale, sample_vpsde_dpmpp_2m, sampler_steps
from star_model.colorfix import adain_color_fix, wavelet_color_fix
from star_model.latent_windows import latent_window_denoiser, plan_spans
from star_model.memory import MemoryPlan, free_device_memory
from star_model.restore import RestoreConfig, pre_upscale, quantize_frames, to_signed_unit
from star_model.sampler import seeded_noise
from star_model.tiles import plan_tiles, tiled_denoiser

log = logging.getLogger(__name__)

PIXEL_MULTIPLE = SPATIAL_COMPRESSION * 2  # the VAE's 8x and the DiT's 2x2 patches
# RestoreConfig fields of the I2VGen-XL sampler this one cannot honour, with the value it runs at. (t_start
# and start_noise do not apply either: the CogVideoX STAR starts from pure noise at t = 999.)
FIXED = {"solver_mode": "normal", "guide_rescale": 0.0, "padding": "minimal", "official_chunking": False}


def check_config(config: RestoreConfig) -> None:
    """ValueError naming every setting the CogVideoX sampler cannot take."""
    wrong = [f"{name}={getattr(config, name)!r} (needs {value!r})" for name, value in FIXED.items()
             if getattr(config, name) != value]
    if config.steps < 2:
        wrong.append(f"steps={config.steps} (needs 2 or more: the zero-SNR rescale spans the steps)")
    if wrong:
        raise ValueError(f"the cogvideox preset cannot restore with {', '.join(wrong)}")


class CogRestorer:
    """Loaded network, T5 and VAE; `__call__` restores one clip (a restore job's window)."""

    def __init__(self, network: CogStarNetwork, text: T5Text, vae: CogVae, config: RestoreConfig) -> None:
        if text.width != network.cfg.text_dim:
            raise ValueError(f"text encoder width {text.width} != the network's text_dim {network.cfg.text_dim}")
        check_config(config)
        self.network, self.text, self.vae, self.config = network, text, vae, config
        self.table = denoiser_table(network.cfg.snr_shift)
        self.device = next(network.parameters()).device
        self.dtype = next(network.parameters()).dtype
        self.last_plan: MemoryPlan | None = None

    @torch.inference_mode()
    def __call__(self, frames_fhwc_u8: np.ndarray | Tensor, prompt: str = "", seed: int | None = None) -> np.ndarray:
        cfg = self.config
        check_config(cfg)  # the evaluate job swaps configs between calls
        seed = cfg.seed if seed is None else seed
        deep = isinstance(frames_fhwc_u8, np.ndarray) and frames_fhwc_u8.dtype == np.uint16
        lr = to_signed_unit(frames_fhwc_u8)  # (F, 3, h, w) in [-1, 1], CPU
        num_frames, _, height, width = lr.shape
        out_h, out_w = height * cfg.scale, width * cfg.scale
        pad_h, pad_w = -out_h % PIXEL_MULTIPLE, -out_w % PIXEL_MULTIPLE

        # 1. pre-upscale, pad bottom/right by replication, sampled VAE encode: (1, 16, T, h', w')
        upscaled = F.pad(pre_upscale(lr, cfg.scale, cfg.upscale), (0, pad_w, 0, pad_h), mode="replicate")
        z_lr = self.vae.encode(upscaled, torch.Generator().manual_seed(seed)).to(self.device)
        del upscaled
        # 2. the prompt's T5 embedding (1, L, D); the uncond one is zeros (guidance.x0_pair)
        context = self.text.context_for(prompt).to(self.device, self.dtype)
        # 3. windows of latent frames and spatial tiles, then 4. the sampler from pure noise
        windows, tiles = self._plan(z_lr.shape)
        steps = sampler_steps(cfg.steps, self.network.cfg.snr_shift)
        noise = torch.randn(z_lr.shape, generator=torch.Generator().manual_seed(seed + 1)).to(self.device)

        def denoise(x: Tensor, t: Tensor, alpha: float) -> Tensor:
            scale = dynamic_cfg_scale(cfg.guide_scale, int(t[0]), cfg.steps)

            def window(xt: Tensor, t: Tensor, frames: slice) -> Tensor:
                def tile(xt_tile: Tensor, t: Tensor, box: tuple[int, int, int, int]) -> Tensor:
                    y0, y1, x0, x1 = box
                    lr_tile = z_lr[:, :, frames, y0:y1, x0:x1]
                    return guide(*x0_pair(self.network, xt_tile, t, alpha, context, lr_tile), scale)

                return tile(xt, t, tiles[0]) if len(tiles) == 1 else tiled_denoiser(tile, tiles)(xt, t)

            return latent_window_denoiser(window, windows, cfg.temporal_merge)(x, t)

        z0 = sample_vpsde_dpmpp_2m(denoise, noise, steps, self.table, seeded_noise(seed + 2))
        # 5. decode, crop the padding, colour fix against the LR frames, uint8 (uint16 for deep colour)
        pixels = self.vae.decode(z0, num_frames)[:, :, :out_h, :out_w].clamp(-1, 1)  # (F, 3, H, W)
        video = (pixels * 0.5 + 0.5).permute(0, 2, 3, 1) * 255  # (F, H, W, 3) in 0..255
        if cfg.color_fix == "adain":
            video = adain_color_fix(video, lr)
        elif cfg.color_fix == "wavelet":
            video = wavelet_color_fix(video, F.interpolate(lr, size=(out_h, out_w), mode="bilinear",
                                                           align_corners=False))
        return quantize_frames(video, deep, cfg.rounding)

    def _plan(self, latent_shape: torch.Size) -> tuple[list[tuple[int, int]], list[tuple[int, int, int, int]]]:
        cfg = self.config
        _, _, frames, lat_h, lat_w = latent_shape
        plan = plan_memory(self.network.cfg, (lat_h, lat_w), frames, free_device_memory(self.device), self.dtype,
                           latent_window=cfg.window, tile=cfg.tile)
        self.last_plan = plan
        overlap = cfg.window_overlap if cfg.window_overlap is not None else plan.latent_window // 2
        windows = plan_spans(frames, plan.latent_window, min(overlap, plan.latent_window - 1))
        tile_h, tile_w = plan.tile or (lat_h, lat_w)
        if tile_h % 2 or tile_w % 2:
            raise ValueError(f"tile {tile_h}x{tile_w} latent pixels: both sides must be even (2x2 patches)")
        tile_h, tile_w = min(tile_h, lat_h), min(tile_w, lat_w)
        tiles = plan_tiles(lat_h, lat_w, tile_h, tile_w, min(cfg.tile_overlap, tile_h - 1, tile_w - 1))
        log.info("restoring %d latent frames of %dx%d in %d window(s) x %d tile(s)", frames, lat_h, lat_w,
                 len(windows), len(tiles))
        return windows, tiles
