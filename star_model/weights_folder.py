"""The layout of a STAR weights folder (what `jobs/fetch_weights.py` writes; nothing is fetched here),
where each piece comes from, and what a folder lacks:

    WEIGHTS/star/light_deg.safetensors   (or heavy_deg; or the released .pt)   SherryX/STAR
    WEIGHTS/text/                        laion/CLIP-ViT-H-14-laion2B-s32B-b79K: config.json,
                                         model.safetensors, tokenizer files
    WEIGHTS/vae/                         stabilityai/stable-video-diffusion-img2vid, subfolder vae:
                                         config.json, diffusion_pytorch_model[.fp16].safetensors
    WEIGHTS/manifest.json                optional: sizes and SHA-256 of every file (pipelines/weights.py)

The CogVideoX-based STAR (presets `cogvideox*`) has a layout of its own, its text and VAE in diffusers'
subfolder names:

    WEIGHTS/star/cogvideox.safetensors   (or the released mp_rank_00_model_states.pt)   SherryX/STAR,
                                         CogVideoX-5B-based/1/mp_rank_00_model_states.pt
    WEIGHTS/text_encoder/, tokenizer/    T5-XXL of THUDM/CogVideoX-5b (subfolders text_encoder, tokenizer)
    WEIGHTS/vae/                         THUDM/CogVideoX-5b, subfolder vae (AutoencoderKLCogVideoX)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAMES = ("light_deg", "heavy_deg")
DEFAULT_CHECKPOINT = CHECKPOINT_NAMES[0]  # light_deg: the official inference script's default
CHECKPOINT_SUFFIXES = (".safetensors", ".pt")  # a converted safetensors file is preferred (mmap, half)
STAR_REPO = "SherryX/STAR"
TEXT_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
VAE_REPO = "stabilityai/stable-video-diffusion-img2vid"  # gated: accept the licence, then use HF_TOKEN
COG_REPO = "THUDM/CogVideoX-5b"  # T5-XXL and the VAE of the base model
COG_CHECKPOINT = "cogvideox"  # star/cogvideox.safetensors: our conversion of the SAT file
COG_SAT_FILE = "CogVideoX-5B-based/1/mp_rank_00_model_states.pt"  # in STAR_REPO
Variant = str  # "i2vgen" or "cogvideox": which backbone's layout


@dataclass(frozen=True)
class WeightPaths:
    checkpoint: Path | None  # None when no STAR checkpoint was asked for; a shipped-layout file for nano
    text: Path | None  # None for a shipped-layout file (it holds the text tower; nano has no VAE)
    vae: Path | None


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


_COG_PIECES: tuple[tuple[str, tuple[tuple[str, ...], ...], str], ...] = (
    ("STAR checkpoint", ((f"star/{COG_CHECKPOINT}.safetensors",), ("star/mp_rank_00_model_states.pt",)),
     f"{STAR_REPO}, file {COG_SAT_FILE}"),
    ("T5 text encoder", (("text_encoder/config.json", "text_encoder/model.safetensors.index.json"),
                         ("text_encoder/config.json", "text_encoder/model.safetensors")),
     f"{COG_REPO}, subfolder text_encoder"),
    ("T5 tokenizer", (("tokenizer/spiece.model", "tokenizer/tokenizer_config.json"),),
     f"{COG_REPO}, subfolder tokenizer"),
    ("VAE", (("vae/config.json", "vae/diffusion_pytorch_model.safetensors"),), f"{COG_REPO}, subfolder vae"),
)


def used_prefixes(checkpoint: str | None, variant: Variant = "i2vgen") -> tuple[str, ...]:
    """The paths (prefixes) of a weights folder that a run with this checkpoint reads."""
    if variant == "cogvideox":
        return ("star/", "text_encoder/", "tokenizer/", "vae/")
    return ("text/", "vae/", f"star/{checkpoint}.")


def missing_weights(files: Collection[str], checkpoint: str | None = DEFAULT_CHECKPOINT,
                    variant: Variant = "i2vgen") -> list[str]:
    """Every piece a weights folder holding `files` (posix paths relative to it) lacks, one line each:
    what it is, which files would do and where they come from. The I2VGen-XL presets share a layout;
    `checkpoint=None`: no STAR checkpoint is needed (fine-tuning from VEnhancer). The CogVideoX layout
    has one checkpoint, so `checkpoint` does not apply to it."""
    pieces = list(_COG_PIECES if variant == "cogvideox" else _PIECES)
    if checkpoint is not None and variant != "cogvideox":
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


def folder_paths(root: Path, checkpoint: str | None = DEFAULT_CHECKPOINT,
                 variant: Variant = "i2vgen") -> WeightPaths:
    """The paths of a complete local weights folder; ValueError listing every missing piece and where
    to get it (`missing_weights`), so a job fails before asking for a GPU. CogVideoX: the checkpoint
    (our conversion first), the folder itself as `text` (text_encoder/ and tokenizer/), and vae/."""
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    missing = missing_weights(files, checkpoint, variant)
    if missing:
        raise ValueError(incomplete_message(str(root), missing))
    if variant == "cogvideox":
        star = next(root / f for (f,) in _COG_PIECES[0][1] if (root / f).is_file())
        return WeightPaths(star, root, root / "vae")
    found = None
    if checkpoint is not None:
        found = next(c for c in (root / "star" / f"{checkpoint}{s}" for s in CHECKPOINT_SUFFIXES) if c.is_file())
    return WeightPaths(found, root / "text", root / "vae")
