"""Typed, frozen configuration of the STAR denoiser (UNet + control branch + LIEM), with presets.

The field names are ours; `from_official_kwargs` maps the official constructor arguments of
`Vid2VidSDUNet` / `VideoControlNet` (as recorded in a parity folder's `tiny_config.json`) onto them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

# Official constructor arguments that are stored but never change the network's layout or maths
# (see tiny_config.json "inactive_or_unused_in_this_forward"); accepted and ignored.
_IGNORED_OFFICIAL_KWARGS = frozenset(
    {"y_dim", "use_scale_shift_norm", "use_checkpoint", "training", "inpainting", "use_sim_mask"}
)
# Official arguments whose non-default value would need code paths STAR never uses.
_REQUIRED_OFFICIAL_VALUES = {"use_image_dataset": False, "use_fps_condition": False}

GROUP_NORM_GROUPS = 32  # every GroupNorm in the official network has 32 groups


@dataclass(frozen=True)
class DenoiserConfig:
    """Shape of the STAR denoiser. Defaults are the official I2VGen-XL-based STAR."""

    in_channels: int = 4
    out_channels: int = 4
    dim: int = 320  # channels of the first level; the time embedding is 4 * dim wide
    context_dim: int = 1024  # width of the text embedding (OpenCLIP ViT-H: 1024)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    # Heads of the initial temporal transformer only (input_blocks.0.1): the official code gives it
    # num_heads * head_dim = 512 channels inside while every other transformer uses C // head_dim heads.
    num_heads: int = 8
    head_dim: int = 64
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    temporal_attention: bool = True
    temporal_depth: int = 1  # transformer blocks per temporal transformer (official temporal_attn_times)
    dropout: float = 0.1
    # What the network's output means. "v": the velocity (official). "residual" (ours, nano): the x0
    # prediction minus the hint, x̂0 = hint + output, with the last convolution zero at initialisation, so
    # an untrained network already returns the pre-upscaled LR and training learns only what it misses.
    # A from-scratch network of nano's size trained for hours on a CPU otherwise spends them relearning
    # the picture, and, in one step from t = 899, leaves alpha·sigma·eps (0.04) of uncancelled noise.
    prediction: Literal["v", "residual"] = "v"

    def __post_init__(self) -> None:
        if self.prediction not in ("v", "residual"):
            raise ValueError(f"DenoiserConfig.prediction={self.prediction!r}; use 'v' or 'residual'")
        widths = self.level_channels
        for name, value in (("dim", self.dim), ("num_res_blocks", self.num_res_blocks),
                            ("head_dim", self.head_dim), ("num_heads", self.num_heads),
                            ("temporal_depth", self.temporal_depth)):
            if value < 1:
                raise ValueError(f"DenoiserConfig.{name}={value} must be >= 1")
        if not self.dim_mult:
            raise ValueError("DenoiserConfig.dim_mult must name at least one level")
        for width in (*widths, self.num_heads * self.head_dim):
            if width % GROUP_NORM_GROUPS:
                raise ValueError(
                    f"channel width {width} (dim={self.dim}, dim_mult={self.dim_mult}) is not a multiple "
                    f"of the {GROUP_NORM_GROUPS} GroupNorm groups; pick dim and dim_mult so that it is")
        for width in widths:
            if width % self.head_dim:
                raise ValueError(f"channel width {width} is not a multiple of head_dim={self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DenoiserConfig.dropout={self.dropout} must be in [0, 1)")

    @property
    def embed_dim(self) -> int:
        """Width of the time embedding (official: 4 * dim = 1280)."""
        return 4 * self.dim

    @property
    def level_channels(self) -> tuple[int, ...]:
        """Channels of each resolution level, finest first."""
        return tuple(self.dim * m for m in self.dim_mult)

    @property
    def num_downsamples(self) -> int:
        return len(self.dim_mult) - 1

    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any]) -> "DenoiserConfig":
        """Build from the official constructor's keyword arguments (e.g. tiny_config.json)."""
        kwargs = dict(kwargs)
        for name, required in _REQUIRED_OFFICIAL_VALUES.items():
            if name in kwargs and bool(kwargs.pop(name)) != required:
                raise ValueError(f"official argument {name}={not required} is not supported by STAR")
        renames = {"in_dim": "in_channels", "out_dim": "out_channels",
                   "temporal_attn_times": "temporal_depth"}
        fields = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in _IGNORED_OFFICIAL_KWARGS:
                continue
            name = renames.get(key, key)
            if name not in fields:
                raise ValueError(f"unknown official constructor argument {key!r}")
            values[name] = tuple(value) if isinstance(value, list) else value
        if "attn_scales" in values:
            values["attn_scales"] = tuple(float(s) for s in values["attn_scales"])
        return cls(**values)


OFFICIAL = DenoiserConfig()
TINY = DenoiserConfig(dim=32, context_dim=40, dim_mult=(1, 1, 1), num_heads=4, head_dim=16,
                      num_res_blocks=1, attn_scales=(1.0, 0.5))
# Ours, trained here (jobs/finetune.py --from-scratch): STAR's layout at a CPU-sized width, on nano's
# pixel-unshuffle latents (3·4² = 48 channels at 1/4 resolution). Spatial attention only at the coarsest
# level (a 1/16-resolution token grid stays short at any frame size); temporal attention everywhere.
# One width at every level keeps the shipped file under 20 MB in fp32 (4.8 M parameters).
# No dropout: a small model trained for hours, not a large one fine-tuned for days.
NANO = DenoiserConfig(in_channels=48, out_channels=48, dim=64, context_dim=40, dim_mult=(1, 1, 1), num_heads=4,
                      head_dim=32, num_res_blocks=1, attn_scales=(0.25,), dropout=0.0,
                      prediction="residual")
