"""Whole-model presets (denoiser + text encoder + VAE) and the loader that turns a preset and a
weights folder into a ready `StarRestorer`.

Weights folder layout (what `jobs/fetch_weights.py` writes; nothing is fetched here):

    WEIGHTS/star/light_deg.safetensors   (or heavy_deg; or the released .pt)   SherryX/STAR
    WEIGHTS/text/                        laion/CLIP-ViT-H-14-laion2B-s32B-b79K: config.json,
                                         model.safetensors, tokenizer files
    WEIGHTS/vae/                         stabilityai/stable-video-diffusion-img2vid, subfolder vae:
                                         config.json, diffusion_pytorch_model[.fp16].safetensors
    WEIGHTS/manifest.json                optional: sizes and SHA-256 of every file (pipelines/weights.py)

The `tiny` preset runs with random weights when no folder is given (smoke tests), or loads TINY-shaped
weights from a folder of the same layout with the same strict loaders (tests of the loading path).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
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
STAR_REPO = "SherryX/STAR"
TEXT_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
VAE_REPO = "stabilityai/stable-video-diffusion-img2vid"  # gated: accept the licence, then use HF_TOKEN


@dataclass(frozen=True)
class StarPreset:
    name: str
    denoiser: denoiser_configs.DenoiserConfig
    text: text_configs.TextConfig
    vae: vae_configs.VaeConfig
    weights_optional: bool  # True: without a weights folder, random init (smoke tests; not a restoration)


PRESETS: dict[str, StarPreset] = {
    "official": StarPreset("official", denoiser_configs.OFFICIAL, text_configs.OFFICIAL, vae_configs.TILED, False),
    "tiny": StarPreset("tiny", denoiser_configs.TINY, text_configs.TINY, vae_configs.TINY, True),
}


@dataclass(frozen=True)
class WeightPaths:
    checkpoint: Path | None  # None when no STAR checkpoint was asked for
    text: Path
    vae: Path


def get_preset(name: str) -> StarPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# The pieces of a weights folder besides the STAR checkpoint: what each is, alternative file sets
# (any one complete set will do, as the loaders accept each) and where it comes from.
_VAE_WEIGHTS = tuple((f"vae/diffusion_pytorch_model{variant}.{suffix}",)
                     for variant in ("", ".fp16") for suffix in ("safetensors", "bin"))
_PIECES: tuple[tuple[str, tuple[tuple[str, ...], ...], str], ...] = (
    ("text encoder config", (("text/config.json",),), TEXT_REPO),
    ("text encoder weights", (("text/model.safetensors",), ("text/pytorch_model.bin",)), TEXT_REPO),
    ("tokenizer", (("text/tokenizer.json",), ("text/vocab.json", "text/merges.txt"),
                   ("text/tokenizer/tokenizer.json",), ("text/tokenizer/vocab.json", "text/tokenizer/merges.txt")),
     TEXT_REPO),
    ("VAE config", (("vae/config.json",),), f"{VAE_REPO}, subfolder vae"),
    ("VAE weights", _VAE_WEIGHTS, f"{VAE_REPO}, subfolder vae"),
)


def missing_weights(files: Collection[str], checkpoint: str | None = "light_deg") -> list[str]:
    """Every piece a weights folder holding `files` (posix paths relative to it) lacks, one line each:
    what it is, which files would do and where they come from. Both presets share the layout.
    `checkpoint=None`: no STAR checkpoint is needed (fine-tuning from VEnhancer)."""
    pieces = list(_PIECES)
    if checkpoint is not None:
        if checkpoint not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint {checkpoint!r}: choose one of {CHECKPOINT_NAMES}")
        star = tuple((f"star/{checkpoint}{suffix}",) for suffix in CHECKPOINT_SUFFIXES)
        pieces.insert(0, ("STAR checkpoint", star, f"{STAR_REPO}, file I2VGen-XL-based/{checkpoint}.pt"))
    present = set(files)
    lines = []
    for what, alternatives, source in pieces:
        if not any(present.issuperset(option) for option in alternatives):
            wanted = " or ".join(" + ".join(option) for option in alternatives)
            lines.append(f"no {what}: {wanted} (from huggingface.co/{source})")
    return lines


def incomplete_message(where: str, problems: list[str]) -> str:
    return (f"weights folder {where} is incomplete; `python jobs/fetch_weights.py --dest {where}` writes a "
            "complete one:\n" + "\n".join(f"  - {p}" for p in problems))


def resolve_weights(preset: StarPreset, weights: str | Path | None,
                    checkpoint: str | None = "light_deg") -> WeightPaths | None:
    """Check that a local weights folder holds everything the preset needs; cheap, touches no device.

    None means random weights (only for presets where weights are optional). Raises ValueError listing
    every missing piece and where to get it, so a job fails before asking for a GPU. Buckets:
    `pipelines.weights.check` and `local_copy`.
    """
    if weights is None:
        if preset.weights_optional:
            return None
        raise ValueError(f"preset {preset.name!r} needs --weights DIR holding star/, text/ and vae/ "
                         f"(see star_model/presets.py for the layout)")
    root = Path(weights)
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    missing = missing_weights(files, checkpoint)
    if missing:
        raise ValueError(incomplete_message(str(root), missing))
    found = None
    if checkpoint is not None:
        found = next(c for c in (root / "star" / f"{checkpoint}{s}" for s in CHECKPOINT_SUFFIXES) if c.is_file())
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
    """Build a StarRestorer for a preset; weights are loaded strictly from the local folder `weights`
    (None: random weights, for presets where they are optional)."""
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
