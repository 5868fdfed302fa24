"""Download STAR's weights from the Hugging Face Hub into a weights folder or bucket for the jobs.

    python jobs/fetch_weights.py --dest /weights
    python jobs/fetch_weights.py --dest gs://models/star --checkpoint light_deg heavy_deg --dtype bf16
    python jobs/fetch_weights.py --dest /weights-cog --variant cogvideox --dtype bf16

Writes star/<checkpoint>.safetensors (converted from the released .pt after checking its published
SHA-256), text/ (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) and vae/ (stabilityai/stable-video-diffusion-
img2vid, gated: accept its licence on huggingface.co and set HF_TOKEN), then manifest.json, last.
With --variant cogvideox (cogvideox-2b for a 2B-shaped checkpoint) it writes the CogVideoX STAR's
layout instead: star/cogvideox.safetensors (the SAT file through its key map), text_encoder/ and
tokenizer/ (T5-XXL) and vae/ of THUDM/CogVideoX-5b (-2b).
Run it where huggingface.co is reachable; a rerun skips what is already there. Exit code 0 when the
folder is complete, 2 for bad arguments or a refused or corrupt download.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout or a Ray working_dir, uninstalled

from pipelines.hub import VAE_VARIANTS, VARIANTS, fetch  # noqa: E402
from star_model.checkpoint import DTYPES  # noqa: E402
from star_model.weights_folder import CHECKPOINT_NAMES, DEFAULT_CHECKPOINT  # noqa: E402


def revision(text: str) -> tuple[str, str]:
    """"PART=REV", e.g. star=0123abc."""
    part, sep, rev = text.partition("=")
    if not sep or part not in ("star", "text", "vae") or not rev:
        raise argparse.ArgumentTypeError(f"--revision {text!r}: write it as star=REV, text=REV or vae=REV")
    return part, rev


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", required=True, help="weights folder: a local path, s3://bucket/prefix or gs://...")
    parser.add_argument("--checkpoint", nargs="+", choices=CHECKPOINT_NAMES, default=[DEFAULT_CHECKPOINT],
                        help=f"STAR checkpoint(s) to fetch (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="dtype of star/*.safetensors (default fp32, as released; bf16 halves the file)")
    parser.add_argument("--keep-pt", action="store_true", help="also keep the released .pt (8 GB each)")
    parser.add_argument("--vae-variant", choices=sorted(VAE_VARIANTS), default="fp16",
                        help="which VAE weights file (default fp16, the one the official code loads)")
    parser.add_argument("--variant", choices=VARIANTS, default="i2vgen",
                        help="which STAR: i2vgen (default), cogvideox, or cogvideox-2b (T5 and VAE of the 2B base)")
    parser.add_argument("--revision", nargs="+", type=revision, default=[], metavar="PART=REV",
                        help="pin star, text or vae to a branch, tag or commit (default main)")
    args = parser.parse_args(argv)  # exits with code 2 and the reason for bad arguments
    try:
        manifest = fetch(args.dest, args.checkpoint, args.dtype, keep_pt=args.keep_pt,
                         vae_variant=args.vae_variant, revisions=dict(args.revision), variant=args.variant)
    except ValueError as e:  # bad arguments, an unreachable destination, a refused or corrupt download
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.dest}: complete, {len(manifest['files'])} files (see manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
