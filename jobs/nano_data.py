"""Build nano's training folder: the real clips of ../shared/media except the held-out ones, plus
panning clips of the photographs scikit-image ships (pip install scikit-image).

    python jobs/nano_data.py --media ../shared/media --dest data/nano-train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.finetune.stills import HELD_OUT, build_training_set  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", required=True, help="the shared media folder (lq/, scenes/)")
    parser.add_argument("--dest", required=True, help="folder to write the training clips into")
    parser.add_argument("--seed", type=int, default=0, help="pan directions of the stills")
    args = parser.parse_args(argv)
    try:
        written = build_training_set(args.media, args.dest, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(written)} training clips in {args.dest}; held out: {', '.join(HELD_OUT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
