"""Whole-model presets (denoiser + text encoder + VAE) and the loader that turns a preset and a
weights folder (its layout: weights_folder.py) into a ready `StarRestorer`.

The `tiny` preset runs with random weights when no folder is given (smoke tests), or loads TINY-shaped
weights from a folder of the same layout with the same strict loaders (tests of the loading path).
The `bicubic` preset has no model and takes no weights: `load_restorer` gives a `BicubicRestorer` (dry runs).
The `cogvideox` presets are the official release's second backbone (star_model/cogvideox/): `load_restorer`
gives a `CogRestorer`; `cogvideox` needs a weights folder of its layout, `cogvideox-tiny` runs random.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from star_model import codec as codec_configs
from star_model.cogvideox import config as cog_configs
from star_model.bicubic import BicubicRestorer
from star_model.codec import CodecConfig, PixelCodec
from star_model import denoiser_config as denoiser_configs
from star_model import text as text_configs
from star_model import vae as vae_configs
from star_model.restore import RestoreConfig, StarRestorer
from star_model.text import TextEncoder, build_text_model, load_text_encoder, tiny_tokenizer
from star_model.unet import StarDenoiser, load_denoiser
from star_model.vae import VideoVae, build_vae, load_vae
from star_model.weights_folder import DEFAULT_CHECKPOINT, WeightPaths, folder_paths

if TYPE_CHECKING:
    from star_model.cogvideox.restore import CogRestorer

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StarPreset:
    """A whole model, or none (denoiser, text and vae all None: `bicubic`, plain interpolation)."""

    name: str
    denoiser: denoiser_configs.DenoiserConfig | None
    text: text_configs.TextConfig | None
    vae: vae_configs.VaeConfig | CodecConfig | None  # the SVD VAE, or nano's parameter-free codec
    weights_optional: bool  # True: runs without a weights folder (random init, or the shipped weights)
    # Weights that come with the package (nano), one file per scale factor it was trained at; None: random
    # without a folder
    shipped: Mapping[int, Path] | None = None
    # RestoreConfig fields this preset restores with unless the caller says otherwise
    restore_defaults: tuple[tuple[str, Any], ...] = ()
    # The CogVideoX-based STAR instead of the I2VGen-XL one (denoiser, text and vae are then None): the
    # nominal size; the real one is read from the checkpoint's shapes
    cog: cog_configs.CogConfig | None = None

    @property
    def has_model(self) -> bool:
        """False for `bicubic`: nothing to load, train or weigh."""
        return self.denoiser is not None or self.cog is not None

    @property
    def variant(self) -> str:
        """Which backbone, and so which weights-folder layout: "i2vgen" or "cogvideox"."""
        return "cogvideox" if self.cog is not None else "i2vgen"

    @property
    def downsample(self) -> int:
        """Pixels per latent pixel along each axis (8 for the SVD and CogVideoX VAEs, the codec's for nano)."""
        return 8 if self.cog is not None else self.vae.downsample

    def restore_config(self, **overrides: Any) -> RestoreConfig:
        """The preset's restore settings: RestoreConfig's defaults, then the preset's, then `overrides`;
        ValueError for settings its sampler cannot take (cogvideox)."""
        config = RestoreConfig(**{**dict(self.restore_defaults), **overrides})
        if self.cog is not None:
            from star_model.cogvideox.restore import check_config

            check_config(config)
        return config

    def shipped_file(self, scale: int) -> Path:
        """The shipped weights for upscaling by `scale`: the file trained at that scale, else at the nearest
        one (a tie goes to the larger: x3 restores with the x4 weights)."""
        if self.shipped is None:
            raise ValueError(f"preset {self.name!r} ships no weights")
        return self.shipped[min(self.shipped, key=lambda trained: (abs(trained - scale), -trained))]


SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
# Nano ships one network per scale, as Real-ESRGAN does (x2plus, x4plus): one network trained on both
# scales, not told which it is asked, spent itself on x4's larger residual and stayed level with bicubic
# at x2 (the model card has the figures). Each file keeps its weights in fp16 (they run in the dtype
# asked for), so both fit in 20 MB.
NANO_WEIGHTS = {2: SHIPPED_WEIGHTS / "nano-x2.safetensors", 4: SHIPPED_WEIGHTS / "nano-x4.safetensors"}
NANO_CARD = SHIPPED_WEIGHTS / "nano.md"  # how both were trained, and what they measure

# Nano restores in one step from the SDEdit start t = 899 (normal mode, steps=1: one evaluation at t = 899)
# with no classifier-free guidance. It was trained at t in 850..950 only (its model card has the command):
# a 4.8 M-parameter network trained for hours on a CPU learns where its sampler asks, not all 1000 steps;
# and on the empty prompt's context only, so cond and uncond would differ by noise that guidance would
# amplify (guided_x0 makes one pass instead of two).
# Its network predicts x̂0 as the bicubic pre-upscale plus a residual (DenoiserConfig.prediction, ours):
# untrained it returns bicubic exactly, and training learns only what bicubic misses.
# One SDEdit noise field for all frames (start_noise="shared"): what the network makes of the noise then
# stays put instead of flickering from frame to frame.
# Spatial tiles of 98x96 latent pixels (392x384 output pixels; trained on 18x24 to 30x32): nano's spatial
# attention is quadratic in a tile's tokens, so whole frames of 1440p would cost minutes each; at 720p tiles
# cost what the whole frame does and differ from it by 61 dB PSNR (measured, Mustache x2).
NANO_RESTORE = (("upscale", "bicubic"), ("solver_mode", "normal"), ("steps", 1), ("guide_scale", 1.0),
                ("guide_rescale", 0.0), ("start_noise", "shared"), ("tile", (98, 96)))

# The official CogVideoX STAR inference (sample_sr.py and its yaml): bicubic pre-upscale, 50 steps of the
# VP-SDE DPM++(2M) sampler, DynamicCFG 6 with no rescale; windows (13 latent frames) and tiles from its planner.
COG_RESTORE = (("upscale", "bicubic"), ("solver_mode", "normal"), ("steps", 50), ("guide_scale", 6.0),
               ("guide_rescale", 0.0))

PRESETS: dict[str, StarPreset] = {
    "official": StarPreset("official", denoiser_configs.OFFICIAL, text_configs.OFFICIAL, vae_configs.TILED, False),
    "nano": StarPreset("nano", denoiser_configs.NANO, text_configs.TINY, codec_configs.NANO, True,
                       shipped=NANO_WEIGHTS, restore_defaults=NANO_RESTORE),
    "tiny": StarPreset("tiny", denoiser_configs.TINY, text_configs.TINY, vae_configs.TINY, True),
    # No model: bicubic upscaling, to dry-run an archive on CPUs before GPU hours (bad inputs, outputs,
    # audio, ledger) and to measure the pipeline itself.
    "bicubic": StarPreset("bicubic", None, None, None, True),
    "cogvideox": StarPreset("cogvideox", None, None, None, False, restore_defaults=COG_RESTORE,
                            cog=cog_configs.FIVE_B),
    # random weights of the parity fixture's sizes, a random tiny T5 and VAE: tests of the whole path
    "cogvideox-tiny": StarPreset("cogvideox-tiny", None, None, None, True, restore_defaults=COG_RESTORE,
                                 cog=cog_configs.TINY),
}


def get_preset(name: str) -> StarPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def default_preset(weights: str | Path | None) -> str:
    """The preset a job runs when none is named: `official` when weights are given (real work), else
    the shipped `nano`, so that a first run without downloads restores real pictures."""
    return "official" if weights is not None else "nano"


def restore_settings(preset_name: str, scale: int, steps: int | None = None) -> RestoreConfig:
    """A preset's restore settings at `scale`; `steps` switches to 'normal' mode with that many solver
    evaluations (None: the preset's own schedule)."""
    sampler = {} if steps is None else dict(solver_mode="normal", steps=steps)
    return get_preset(preset_name).restore_config(scale=scale, **sampler)


def resolve_weights(preset: StarPreset, weights: str | Path | None,
                    checkpoint: str | None = DEFAULT_CHECKPOINT) -> WeightPaths | None:
    """Check that a local weights folder holds everything the preset needs; cheap, touches no device.

    None means random weights (only for presets where weights are optional). Raises ValueError listing
    every missing piece and where to get it, so a job fails before asking for a GPU. Buckets:
    `pipelines.weights.check` and `local_copy`.
    """
    if not preset.has_model:
        if weights is not None:
            raise ValueError(f"preset {preset.name!r} upscales without a model and takes no weights; drop "
                             f"--weights {weights}, or choose a STAR preset (nano, official) to use them")
        return None
    if preset.shipped is not None and weights is not None:
        if not Path(weights).is_file():
            raise ValueError(f"preset {preset.name!r} takes --weights as one local file of its shipped layout (what "
                             f"jobs/finetune.py --export writes), not {weights}")
        return WeightPaths(Path(weights), None, None)
    if weights is None:
        for shipped in (preset.shipped or {}).values():
            if not shipped.is_file():
                raise ValueError(f"preset {preset.name!r} ships its weights at {shipped}, which is missing; "
                                 f"reinstall the package, or train them with the command in {NANO_CARD}")
        if preset.weights_optional:
            return None
        pieces = "star/, text_encoder/, tokenizer/ and vae/" if preset.cog else "star/, text/ and vae/"
        raise ValueError(f"preset {preset.name!r} needs --weights DIR holding {pieces} "
                         f"(see star_model/weights_folder.py for the layout)")
    return folder_paths(Path(weights), checkpoint, preset.variant)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (where half precision is slow)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


Vae = VideoVae | PixelCodec


def build_models(preset: StarPreset, paths: WeightPaths | None, *, device: torch.device, dtype: torch.dtype,
                 seed: int = 0, fresh: bool = False, scale: int = 4) -> tuple[StarDenoiser, TextEncoder, Vae]:
    """The preset's denoiser (in `dtype`), text encoder and VAE or codec: the one place that builds them,
    for restoring and for training.

    `paths` (from `resolve_weights`) loads everything strictly from a weights folder. Without one, a
    preset with shipped weights (nano) loads its file for `scale`, and any other preset gets random
    weights drawn from `seed`; `fresh=True` asks for that random start even where weights are shipped
    (nano trained from scratch). Random weights depend on `seed` only, so every worker and every
    restart builds the same.
    """
    if preset.denoiser is None:
        raise ValueError(f"preset {preset.name!r} has no I2VGen-XL model to build (fine-tuning and the measure "
                         f"jobs take nano, official or tiny)")
    if paths is not None and preset.shipped is not None:  # another file of the shipped layout
        return load_shipped(preset, device=device, dtype=dtype, path=paths.checkpoint)
    if paths is not None:
        # No checkpoint in `paths` (a VEnhancer start loads its own): the denoiser starts from `seed`.
        denoiser = load_denoiser(preset.denoiser, paths.checkpoint, device=device, dtype=dtype, seed=seed)
        text = load_text_encoder(paths.text, device=device)
        return denoiser, text, _load_vae(preset, paths.vae, device, dtype)
    if preset.shipped is not None and not fresh:
        return load_shipped(preset, device=device, dtype=dtype, path=preset.shipped_file(scale))
    if preset.shipped is None:
        log.warning("preset %r with RANDOM weights: its output is NOT a restoration (smoke tests, benchmarks)",
                    preset.name)
    denoiser = load_denoiser(preset.denoiser, None, device=device, dtype=dtype, seed=seed)
    # The tiny vocabulary fits any text config; token ids do not change the cost of the text tower.
    text = TextEncoder(build_text_model(preset.text, seed=seed), tiny_tokenizer(), device=device)
    return denoiser, text, _load_vae(preset, None, device, dtype, seed)


def _load_vae(preset: StarPreset, folder: Path | None, device: torch.device, dtype: torch.dtype,
              seed: int = 0) -> Vae:
    if isinstance(preset.vae, CodecConfig):
        return PixelCodec(preset.vae, device=device)
    # The SVD VAE overflows in fp16 (its config says force_upcast): bf16 where asked, else fp32.
    vae_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    if folder is not None:
        return load_vae(folder, preset.vae, device=device, dtype=vae_dtype)
    return VideoVae(build_vae(preset.vae, seed=seed).to(device, vae_dtype), preset.vae)


# Shipped weights hold the denoiser and the text tower in one safetensors file, under these prefixes.
DENOISER_PREFIX, TEXT_PREFIX = "denoiser.", "text."


def save_shipped(path: str | Path, denoiser: StarDenoiser, text: TextEncoder, metadata: dict[str, str]) -> None:
    """Write a preset's weights file: the denoiser and the text tower, strictly reloadable. In fp16, half
    the size: loaded back into fp32, nano's x4 output moved by at most one level (mean 0.001 levels,
    0.0001 dB on a held-out crop)."""
    import safetensors.torch

    tensors = {DENOISER_PREFIX + k: v.detach().to("cpu", torch.float16).contiguous()
               for k, v in denoiser.state_dict().items()}
    tensors.update({TEXT_PREFIX + k: v.detach().to("cpu", torch.float16).contiguous()
                    for k, v in text.model.state_dict().items()})
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_shipped(preset: StarPreset, *, device: torch.device, dtype: torch.dtype,
                 path: str | Path) -> tuple[StarDenoiser, TextEncoder, Vae]:
    """A file of the preset's shipped layout (`StarPreset.shipped_file`, or one `--export` wrote), loaded
    strictly."""
    from star_model.checkpoint import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"preset {preset.name!r} has no weights at {path}; reinstall the package, or train them "
                         f"with the command in {NANO_CARD}")
    state = read_state_dict(path)
    denoiser_state = {k[len(DENOISER_PREFIX):]: v for k, v in state.items() if k.startswith(DENOISER_PREFIX)}
    text_state = {k[len(TEXT_PREFIX):]: v for k, v in state.items() if k.startswith(TEXT_PREFIX)}
    if len(denoiser_state) + len(text_state) != len(state):
        raise ValueError(f"{path} holds tensors outside {DENOISER_PREFIX!r} and {TEXT_PREFIX!r}")
    denoiser = load_denoiser(preset.denoiser, None, device=device, dtype=dtype)
    denoiser.load_state_dict(denoiser_state, strict=True)
    model = build_text_model(preset.text)
    model.load_state_dict(text_state, strict=True)
    text = TextEncoder(model, tiny_tokenizer(), device=device)
    return denoiser, text, _load_vae(preset, None, device, dtype)


def load_restorer(preset_name: str, weights: str | Path | None = None, *, config: RestoreConfig | None = None,
                  checkpoint: str = DEFAULT_CHECKPOINT, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, seed: int = 0) -> StarRestorer | BicubicRestorer | CogRestorer:
    """Build a StarRestorer for a preset; weights are loaded strictly from the local folder `weights`
    (None: the shipped weights for the config's scale, or random ones for presets where they are
    optional). `config` None: the preset's own restore settings. `bicubic`: a BicubicRestorer (CPU; no
    weights)."""
    preset = get_preset(preset_name)
    paths = resolve_weights(preset, weights, checkpoint)
    if not preset.has_model:
        return BicubicRestorer(config or preset.restore_config())
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    config = config or preset.restore_config()
    if preset.cog is not None:  # lazily: diffusers' CogVideoX classes only where asked for
        from star_model.cogvideox.loading import load_cog_restorer

        return load_cog_restorer(preset.cog, paths, config, device=device, dtype=dtype, seed=seed)
    denoiser, text, vae = build_models(preset, paths, device=device, dtype=dtype, seed=seed, scale=config.scale)
    return StarRestorer(denoiser, text, vae, config)
