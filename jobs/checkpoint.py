"""Convert a released STAR checkpoint to safetensors, or print a file's SHA-256.

    python jobs/checkpoint.py convert weights/star/light_deg.pt weights/star/light_deg.safetensors \\
        --dtype bf16 --verify-sha256
    python jobs/checkpoint.py sha256 weights/star/heavy_deg.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from star_model.checkpoint import DTYPES, CheckpointError, convert_to_safetensors, sha256_of  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="write a .pt checkpoint as .safetensors")
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    convert.add_argument("--verify-sha256", action="store_true",
                         help="check SRC against the published digest for its file name first")
    digest = commands.add_parser("sha256", help="print a file's SHA-256")
    digest.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            expected = "published" if args.verify_sha256 else None
            out = convert_to_safetensors(args.src, args.dst, args.dtype, expected_sha256=expected)
            print(f"wrote {out} ({args.dtype})")
        else:
            print(f"{sha256_of(args.file)}  {args.file}")
    except (CheckpointError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
