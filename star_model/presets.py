"""Whole-model presets (denoiser + text encoder + VAE) and the loader that turns a preset and a
weights folder into a ready `StarRestorer`.

Weights folder layout (what `jobs/fetch_weights.py`-style downloads produce; nothing is fetched here):

    WEIGHTS/star/light_deg.pt        (or heavy_deg.pt, or a converted .safetensors)
    WEIGHTS/text/                    laion/CLIP-ViT-H-14-laion2B-s32B-b79K (config.json, weights, tokenizer)
    WEIGHTS/vae/                     stabilityai/stable-video-diffusion-img2vid, subfolder vae
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from star_model import config as denoiser_configs
from star_model import text as text_configs
from star_model import vae as vae_configs
from star_model.restore import RestoreConfig, StarRestorer
from star_model.text import TextEncoder, build_text_model, load_text_encoder, tiny_tokenizer
from star_model.unet import load_denoiser
from star_model.vae import VideoVae, build_vae, load_vae

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("light_deg", "heavy_deg")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt")  # a converted safetensors file is preferred (mmap, half)


@dataclass(frozen=True)
class StarPreset:
    name: str
    denoiser: denoiser_configs.DenoiserConfig
    text: text_configs.TextConfig
    vae: vae_configs.VaeConfig
    random_weights: bool  # True: no weights folder, random init (smoke tests; not a restoration)


PRESETS: dict[str, StarPreset] = {
    "official": StarPreset("official", denoiser_configs.OFFICIAL, text_configs.OFFICIAL, vae_configs.TILED, False),
    "tiny": StarPreset("tiny", denoiser_configs.TINY, text_configs.TINY, vae_configs.TINY, True),
}


@dataclass(frozen=True)
class WeightPaths:
    checkpoint: Path
    text: Path
    vae: Path


def get_preset(name: str) -> StarPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def resolve_weights(preset: StarPreset, weights: str | Path | None, checkpoint: str = "light_deg") -> WeightPaths | None:
    """Check that a weights folder holds everything the preset needs; cheap, touches no device.

    Raises ValueError naming the missing piece and how to get it, so a job fails before asking for a GPU.
    """
    if preset.random_weights:
        if weights is not None:
            raise ValueError(f"preset {preset.name!r} uses random weights; drop --weights or pick 'official'")
        return None
    if weights is None:
        raise ValueError(f"preset {preset.name!r} needs --weights DIR holding star/, text/ and vae/ "
                         f"(see star_model/presets.py for the layout)")
    if checkpoint not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint {checkpoint!r}: choose one of {CHECKPOINT_NAMES}")
    root = Path(weights)
    candidates = [root / "star" / f"{checkpoint}{suffix}" for suffix in CHECKPOINT_SUFFIXES]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(f"no STAR checkpoint at {' or '.join(map(str, candidates))}; download "
                         f"I2VGen-XL-based/{checkpoint}.pt from huggingface.co/SherryX/STAR there")
    for sub, source in (("text", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
                        ("vae", "stabilityai/stable-video-diffusion-img2vid (subfolder vae)")):
        if not (root / sub / "config.json").is_file():
            raise ValueError(f"no {sub} model at {root / sub}; download {source} there")
    return WeightPaths(found, root / "text", root / "vae")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (where half precision is slow)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_restorer(preset_name: str, weights: str | Path | None = None, *, config: RestoreConfig = RestoreConfig(),
                  checkpoint: str = "light_deg", device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> StarRestorer:
    """Build a StarRestorer for a preset; official weights are loaded strictly from `weights`."""
    preset = get_preset(preset_name)
    paths = resolve_weights(preset, weights, checkpoint)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if paths is None:
        return random_restorer(preset, config=config, device=device, dtype=dtype)
    denoiser = load_denoiser(preset.denoiser, paths.checkpoint, device=device, dtype=dtype)
    text = load_text_encoder(paths.text, device=device)
    vae = load_vae(paths.vae, preset.vae, device=device, dtype=_vae_dtype(dtype))
    return StarRestorer(denoiser, text, vae, config)


def random_restorer(preset: StarPreset, *, config: RestoreConfig, device: torch.device, dtype: torch.dtype,
                    vae_config: vae_configs.VaeConfig | None = None) -> StarRestorer:
    """A restorer of the preset's shapes with random weights: the TINY smoke preset, and benchmarks of
    the official shapes (random weights take the same time as real ones)."""
    log.warning("preset %r with RANDOM weights: its output is NOT a restoration (smoke tests, benchmarks)",
                preset.name)
    denoiser = load_denoiser(preset.denoiser, None, device=device, dtype=dtype)
    # The tiny vocabulary fits any text config; token ids do not change the cost of the text tower.
    text = TextEncoder(build_text_model(preset.text), tiny_tokenizer(), device=device)
    vae_config = vae_config or preset.vae
    vae = VideoVae(build_vae(vae_config).to(device, _vae_dtype(dtype)), vae_config)
    return StarRestorer(denoiser, text, vae, config)


def _vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SVD VAE overflows in fp16 (its config says force_upcast): bf16 where asked, else fp32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
