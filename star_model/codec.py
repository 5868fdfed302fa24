"""Nano's latent codec: pixel-unshuffle, a parameter-free, exactly invertible stand-in for the VAE.

A (F, 3, H, W) clip becomes (F, 3·f², H/f, W/f) latents: each f x f block of pixels is folded into
channels, so nothing is lost and nothing is learnt (decode o encode is the identity up to float
rounding). Chosen by measurement (`jobs/measure/codec.py`, held-out clips at 312x168, this 2-core
CPU): pixel-unshuffle gives the uint8 frames back identically at 1.9 ms/frame; a small diffusers
AutoencoderKL (x4, 4 latent channels, 0.95 M parameters) trained here for 172 s reached 20.2 dB luma
PSNR at 467 ms/frame. A codec's loss caps what the restorer can reach (bicubic alone scores ~34 dB at
x4 on these clips), and the time a VAE would need to train here is better spent on the denoiser.

The class has `VideoVae`'s interface (encode/decode on (F, C, h, w), `downsample`, `latent_channels`,
`config.decode_group_frames`), so the restorer, the sampler and the DF loss use it unchanged.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from star_model.transfer import to_device, wait_for_copies


@dataclass(frozen=True)
class CodecConfig:
    factor: int = 4  # pixels per latent pixel along each axis
    decode_group_frames: int = 8  # frames per decode call (memory only: frames are independent)

    def __post_init__(self) -> None:
        if self.factor < 1 or self.decode_group_frames < 1:
            raise ValueError(f"CodecConfig factor={self.factor}, decode_group_frames={self.decode_group_frames} "
                             "must be >= 1")

    @property
    def downsample(self) -> int:
        return self.factor

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor**2


NANO = CodecConfig()


class PixelCodec:
    """Frames in [-1, 1] <-> pixel-unshuffled latents; no weights, no randomness."""

    def __init__(self, config: CodecConfig = NANO, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.config = config
        self.downsample = config.factor
        self.latent_channels = config.latent_channels
        self.scaling_factor = 1.0  # frames are already in [-1, 1], unit-scale like scaled VAE latents
        self.device = torch.device(device)
        self.dtype = dtype

    def encode(self, frames: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """(F, 3, H, W) -> (F, 3·f², H/f, W/f) fp32 on the codec's device. `generator` and `sample` are
        accepted for VideoVae's interface; the codec is deterministic."""
        if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
            raise ValueError(f"frames must be float (F, 3, H, W) in [-1, 1], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        f = self.downsample
        if frames.shape[2] % f or frames.shape[3] % f:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[3]} is not a multiple of {f}; pad first")
        return F.pixel_unshuffle(to_device(frames, self.device, torch.float32), f)

    def decode(self, latents: Tensor, out_device: str | torch.device | None = None, grad: bool = False) -> Tensor:
        """(F, 3·f², h, w) -> (F, 3, f·h, f·w) fp32, not clamped; differentiable (the DF loss's decoder)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be (F, {self.latent_channels}, h, w), got {tuple(latents.shape)}")
        out_device = latents.device if out_device is None else torch.device(out_device)
        step = self.config.decode_group_frames
        with nullcontext() if grad else torch.no_grad():
            groups = [to_device(F.pixel_shuffle(latents[i:i + step].float(), self.downsample), out_device)
                      for i in range(0, latents.shape[0], step)]  # one group on the device at a time
        wait_for_copies(latents.device)  # the host copies are read from here on
        return torch.cat(groups)
