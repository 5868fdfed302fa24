"""Fine-tune STAR's control branch and LIEM gates on the HR videos under a URL, with Ray Train.

    python jobs/finetune.py --data gs://b/hr --storage gs://b/runs --preset official \\
        --weights /weights --workers 8 --use-gpu --steps 15000
    python jobs/finetune.py --data examples --storage /tmp/runs --preset tiny \\
        --workers 1 --steps 20 --frames 4 --crop 48x32          # CPU smoke run (workers + 1 CPUs)

Run it again with the same --storage (and --name) and it resumes from the latest checkpoint there.
Bad arguments, missing weights and unreachable storage fail before Ray starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipelines.finetune.step import FinetuneConfig, check_config, run_finetune  # noqa: E402
from pipelines.finetune.data import ClipConfig  # noqa: E402
from star_model.degrade import PROFILES  # noqa: E402
from star_model.losses import LossConfig  # noqa: E402


def crop_size(text: str) -> tuple[int, int]:
    """"HxW" (e.g. 720x1280)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop {text!r}: write it as HEIGHTxWIDTH, e.g. 720x1280") from None
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder or bucket URL of HR videos")
    parser.add_argument("--storage", required=True, help="folder or bucket URL for checkpoints")
    parser.add_argument("--preset", default="official", help="'official' (needs --weights) or 'tiny'")
    parser.add_argument("--weights", help="folder or bucket with star/, text/, vae/ (jobs/fetch_weights.py)")
    parser.add_argument("--venhancer", help="start the denoiser from venhancer_v2.pt (as the paper)")
    parser.add_argument("--name", default="star-finetune", help="run name; the same name resumes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per worker, NCCL, bf16 autocast")
    parser.add_argument("--steps", type=int, required=True, help="total optimiser steps (resumed runs count on)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per worker per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--crop", type=crop_size, default=(720, 1280), help="HR crop HEIGHTxWIDTH")
    parser.add_argument("--degrade", choices=sorted(PROFILES), default="full")
    parser.add_argument("--scales", type=lambda t: tuple(int(v) for v in t.split(",")), default=(),
                        help="scale factors drawn per clip, e.g. 2,4 (needs --batch-size 1)")
    parser.add_argument("--clips-per-video", type=int, default=1)
    parser.add_argument("--from-scratch", action="store_true", help="train the whole denoiser from a seeded random start")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--df-mode", choices=["paper", "official"], default="paper",
                        help="paper: DF loss with gradient through the VAE decoder; official: logged only")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-noise", action="store_true",
                        help="debug: the same t and noise per clip at every step (overfit a tiny set)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        clips = ClipConfig(frames=args.frames, crop=args.crop, seed=args.seed, degrade=PROFILES[args.degrade],
                           scales=args.scales, clips_per_video=args.clips_per_video)
        cfg = FinetuneConfig(
            data=args.data, storage=args.storage, preset=args.preset, weights=args.weights,
            venhancer=args.venhancer, name=args.name, workers=args.workers, use_gpu=args.use_gpu,
            from_scratch=args.from_scratch, cpus_per_worker=args.cpus_per_worker,
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, checkpoint_every=args.checkpoint_every,
            seed=args.seed, fixed_noise=args.fixed_noise, clips=clips, loss=LossConfig(mode=args.df_mode))
        check_config(cfg)  # before Ray: bad configuration never waits for a cluster
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_finetune(cfg)
    print(f"done: step {result.step}, loss {result.metrics.get('loss', float('nan')):.4f}, "
          f"checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
