"""The layout of a STAR weights folder (what `jobs/fetch_weights.py` writes; nothing is fetched here),
where each piece comes from, and what a folder lacks:

    WEIGHTS/star/light_deg.safetensors   (or heavy_deg; or the released .pt)   SherryX/STAR
    WEIGHTS/text/                        laion/CLIP-ViT-H-14-laion2B-s32B-b79K: config.json,
                                         model.safetensors, tokenizer files
    WEIGHTS/vae/                         stabilityai/stable-video-diffusion-img2vid, subfolder vae:
                                         config.json, diffusion_pytorch_model[.fp16].safetensors
    WEIGHTS/manifest.json                optional: sizes and SHA-256 of every file (pipelines/weights.py)
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


def missing_weights(files: Collection[str], checkpoint: str | None = DEFAULT_CHECKPOINT) -> list[str]:
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


def folder_paths(root: Path, checkpoint: str | None = DEFAULT_CHECKPOINT) -> WeightPaths:
    """The paths of a complete local weights folder; ValueError listing every missing piece and where
    to get it (`missing_weights`), so a job fails before asking for a GPU."""
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    missing = missing_weights(files, checkpoint)
    if missing:
        raise ValueError(incomplete_message(str(root), missing))
    found = None
    if checkpoint is not None:
        found = next(c for c in (root / "star" / f"{checkpoint}{s}" for s in CHECKPOINT_SUFFIXES) if c.is_file())
    return WeightPaths(found, root / "text", root / "vae")
