"""Restore and upscale every video under an input folder or bucket with STAR, on Ray.

    python jobs/upscale_archive.py --input gs://archive/raw --output gs://archive/restored --weights /weights
    ray job submit --working-dir . -- python jobs/upscale_archive.py --input ... --output ...
    python jobs/upscale_archive.py --input examples --output out --preset tiny --scale 2 --steps 2

<input>/<rel>/<name>.<ext> becomes <output>/<rel>/<name>.mp4 (.mkv where MP4 cannot carry the
source's streams); <output>/_ledger/ holds the Parquet ledger (videos/), previews and summary.json.
A rerun restores only what is new, changed, unfinished or failed. Exit code 0 when the run reached
its end (failed videos are listed), 2 when it could not start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout or a Ray working_dir, uninstalled

from pipelines.restore.pipeline import ArchiveJob, ConfigError, run  # noqa: E402


def parse(argv: list[str] | None) -> ArchiveJob:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder, s3://bucket/prefix or gs://bucket/prefix")
    parser.add_argument("--output", required=True, help="folder or bucket URL for restored videos and the ledger")
    parser.add_argument("--preset", default="official",
                        help="official (needs --weights) or tiny (without --weights random: NOT a restoration)")
    parser.add_argument("--weights", default=None,
                        help="folder or bucket with star/, text/ and vae/ (jobs/fetch_weights.py writes one)")
    parser.add_argument("--checkpoint", default="light_deg", help="light_deg or heavy_deg")
    parser.add_argument("--scale", type=int, default=4, help="upscaling factor (default 4)")
    parser.add_argument("--prompt", default="", help="text prompt for every video")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler evaluations ('normal' mode); default: the official fast schedule (14)")
    parser.add_argument("--window", type=int, default=32, help="frames per restore window (default 32)")
    parser.add_argument("--overlap", type=int, default=8, help="frames cross-faded between windows (default 8)")
    parser.add_argument("--actors", type=int, default=None,
                        help="restore actors at most (default: one per GPU in the cluster, 1 without GPUs)")
    parser.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto",
                        help="gpu: ask for GPUs even before an autoscaler has started any")
    parser.add_argument("--accelerator-type", default=None,
                        help="restore only on this GPU type, as Ray names it (L4, A100, H100, ...); implies GPUs")
    parser.add_argument("--lease-minutes", type=float, default=10.0,
                        help="runs over the same output skip the videos another live run holds; a crashed "
                             "run's videos are free after this long (default 10)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="also retry unchanged sources that failed as bad inputs before")
    args = parser.parse_args(argv)
    return ArchiveJob(input=args.input, output=args.output, preset=args.preset, weights=args.weights,
                      checkpoint=args.checkpoint, scale=args.scale, steps=args.steps, prompt=args.prompt,
                      window=args.window, overlap=args.overlap, actors=args.actors, device=args.device,
                      retry_failed=args.retry_failed, accelerator_type=args.accelerator_type,
                      lease_minutes=args.lease_minutes)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    try:
        job = parse(argv)
        run(job)
    except ConfigError as e:  # bad arguments, weights or storage: reported before Ray starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
