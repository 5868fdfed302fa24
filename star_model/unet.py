"""The STAR denoiser (official `ControlledV2VUNet`): the I2VGen-XL text-to-video UNet with the
control branch under `VideoControlNet`, LIEM gates in every transformer, predicting v.

`state_dict()` of the official preset has the released checkpoints' 2,247 keys and shapes.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from star_model.blocks import GroupNorm32, ResBlock, Upsample
from star_model.checkpoint import load_checkpoint
from star_model.denoiser_config import DenoiserConfig
from star_model.control import ControlBranch
from star_model.diffusion import sinusoidal_embedding
from star_model.padding import latent_size_ok, min_padded_latent
from star_model.unet_parts import attention_layers, build_encoder, build_middle_block, build_time_embed, run_block


def build_decoder(cfg: DenoiserConfig, skips: list[int]) -> nn.ModuleList:
    """Decoder blocks: per level num_res_blocks + 1 [ResBlock | ST | TT] blocks, each eating one skip
    (deepest first), and an Upsample closing every level but the finest."""
    skips = list(skips)
    blocks = nn.ModuleList()
    scale = 0.5 ** cfg.num_downsamples
    channels = cfg.level_channels[-1]
    for level, out_channels in enumerate(reversed(cfg.level_channels)):
        for j in range(cfg.num_res_blocks + 1):
            layers: list[nn.Module] = [ResBlock(channels + skips.pop(), cfg.embed_dim, cfg.dropout, out_channels)]
            if scale in cfg.attn_scales:
                layers += attention_layers(cfg, out_channels)
            channels = out_channels
            if level < cfg.num_downsamples and j == cfg.num_res_blocks:
                layers.append(Upsample(channels))
                scale *= 2
            blocks.append(nn.ModuleList(layers))
    assert not skips, "every skip connection must be consumed"
    return blocks


class StarDenoiser(nn.Module):
    """v-prediction network: `model(x, t, y, hint=z_lr)`.

    x, hint: (B, C, F, H, W) noisy latent and clean LR latent; t: (B,) integer timesteps;
    y: (B, L, context_dim) text embedding. Returns v with the shape of x, or x̂0 - hint when
    `cfg.prediction` is "residual" (`star_model.diffusion.velocity` turns either into v).
    H must survive the Downsample/Upsample round trip (see `latent_size_ok` in padding.py).
    """

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Registration order mirrors the official state_dict order.
        self.time_embed = build_time_embed(cfg)
        self.input_blocks, skips = build_encoder(cfg)
        self.middle_block = build_middle_block(cfg)
        self.output_blocks = build_decoder(cfg, skips)
        self.out = nn.Sequential(GroupNorm32(cfg.dim), nn.SiLU(),
                                 nn.Conv2d(cfg.dim, cfg.out_channels, 3, padding=1))
        self.zero_residual_head()
        self.VideoControlNet = ControlBranch(cfg)  # attribute name = the official key prefix
        self.gradient_checkpointing = False

    def zero_residual_head(self) -> None:
        """A "residual" network starts with its last convolution at zero, so untrained it returns the
        hint itself (x̂0 = hint): training starts from the pre-upscaled LR. Nothing for v-prediction."""
        if self.cfg.prediction == "residual":
            with torch.no_grad():
                self.out[-1].weight.zero_()
                self.out[-1].bias.zero_()

    def set_gradient_checkpointing(self, enabled: bool = True) -> "StarDenoiser":
        """Recompute each block's activations in backward (less memory, ~30% more compute)."""
        self.gradient_checkpointing = enabled
        self.VideoControlNet.gradient_checkpointing = enabled
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, hint: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = x.shape
        if not latent_size_ok(h, w, self.cfg.num_downsamples):
            raise ValueError(f"latent size {h}x{w} does not survive {self.cfg.num_downsamples} down/upsamplings; "
                             f"pad to {min_padded_latent(h, w, self.cfg.num_downsamples)} (padding.minimal_pad)")
        if hint.shape != x.shape:
            raise ValueError(f"hint {tuple(hint.shape)} must have the shape of x {tuple(x.shape)}")
        dtype = next(self.parameters()).dtype
        ckpt = self.gradient_checkpointing

        # 1. time embedding and text context, repeated per frame (frames are flattened batch-major)
        emb = self.time_embed(sinusoidal_embedding(t, self.cfg.dim).to(dtype))
        emb = emb.repeat_interleave(f, dim=0)  # (B*F, embed_dim)
        context = y.to(dtype).repeat_interleave(f, dim=0)  # (B*F, L, context_dim)
        x = x.to(dtype).transpose(1, 2).reshape(b * f, -1, h, w)  # (B*F, C, H, W)
        hint = hint.to(dtype).transpose(1, 2).reshape(b * f, -1, h, w)

        # 2. control residuals from the LR latent: one per skip, then the middle one
        control = self.VideoControlNet(x, t, context, hint, f)

        # 3. encoder, keeping the skips
        skips = []
        for block in self.input_blocks:
            x = run_block(block, x, emb, context, f, ckpt)
            skips.append(x)

        # 4. middle block plus the control branch's middle residual
        for layer in self.middle_block:
            x = run_block(layer, x, emb, context, f, ckpt)
        x = x + control.pop()

        # 5. decoder: each skip gets its control residual before concatenation
        for block in self.output_blocks:
            x = torch.cat([x, skips.pop() + control.pop()], dim=1)
            x = run_block(block, x, emb, context, f, ckpt)

        # 6. head, back to (B, C, F, H, W)
        x = self.out(x)
        return x.reshape(b, f, -1, h, w).transpose(1, 2).contiguous()


def load_denoiser(cfg: DenoiserConfig, weights: str | os.PathLike | None = None, *,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  expected_sha256: str | None = None, seed: int = 0) -> StarDenoiser:
    """Build the denoiser directly on `device` in `dtype` and load `weights` strictly (eval mode).

    The module is first built on the meta device, so the official 2.04 B parameters are allocated
    once, in the target dtype (4 GB in bf16), and never initialised randomly only to be overwritten.
    With `weights=None` the parameters get PyTorch's default random init from `seed` (the TINY smoke
    preset): every process builds the same model, so windows restored by different workers match.
    """
    with torch.device("meta"):
        model = StarDenoiser(cfg)
    model = model.to(dtype).to_empty(device=device)
    if weights is None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in model.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)):
                    module.reset_parameters()
            model.zero_residual_head()
    else:
        load_checkpoint(model, weights, strict=True, expected_sha256=expected_sha256)
    return model.eval()
