"""Fine-tune STAR's control branch and LIEM gates on the HR videos under a URL, with Ray Train.

    python jobs/finetune.py --data gs://b/hr --storage gs://b/runs --preset official \\
        --weights /weights --workers 8 --use-gpu --steps 15000
    python jobs/finetune.py --data examples --storage /tmp/runs --preset tiny \\
        --workers 1 --steps 20 --frames 4 --crop 48x32          # CPU smoke run (workers + 1 CPUs)

With --from-scratch the whole denoiser trains from a seeded random start (how nano is made: its model
card, star_model/weights/nano.md, has the command); --export FILE then writes the final checkpoint as
the preset's shipped weights file.

Run it again with the same --storage (and --name) and it resumes from the latest checkpoint there.
Bad arguments, missing weights and unreachable storage fail before Ray starts. Every flag is a field
of FinetuneConfig, ClipConfig or LossConfig, with its default and help there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from jobs.flags import add_options, int_list, size, values  # noqa: E402
from pipelines.finetune.config import FinetuneConfig, check_config  # noqa: E402
from pipelines.finetune.data import ClipConfig  # noqa: E402
from pipelines.finetune.export import export_shipped  # noqa: E402
from pipelines.finetune.trainer import run_finetune  # noqa: E402
from star_model.training.degrade_config import PROFILES  # noqa: E402
from star_model.training.losses import LossConfig  # noqa: E402

RUN = ("data", "storage", "preset", "weights", "venhancer", "checkpoint", "from_scratch", "init", "name", "workers",
       "use_gpu", "cpus_per_worker", "steps", "batch_size", "grad_accum", "lr", "checkpoint_every", "seed", "timesteps",
       "ema", "fixed_noise")
CLIPS = ("frames", "crop", "degrade", "scales", "clips_per_video", "clean_prob")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser, FinetuneConfig, RUN, required=["steps"], parse={"timesteps": int_list})
    add_options(parser, ClipConfig, CLIPS, parse={"crop": size, "scales": int_list, "degrade": PROFILES})
    add_options(parser, LossConfig, ["mode"], flags={"mode": "--df-mode"})
    parser.add_argument("--export", type=Path, help="after the run, write the final checkpoint as the preset's "
                        "shipped weights file (safetensors; --from-scratch runs only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.init is not None:  # Ray Train's workers run in another folder
        args.init = str(Path(args.init).resolve())
    try:
        clips = ClipConfig(**values(args, CLIPS), seed=args.seed)  # one seed draws clips, noise and init
        cfg = FinetuneConfig(**values(args, RUN), clips=clips, loss=LossConfig(mode=args.mode))
        check_config(cfg)  # before Ray: bad configuration never waits for a cluster
        if args.export is not None and not cfg.from_scratch:
            raise ValueError("--export writes a from-scratch preset's weights file: add --from-scratch")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_finetune(cfg)
    except ValueError as e:  # a request this machine can never meet, found once Ray has started
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: step {result.step}, loss {result.metrics.get('loss', float('nan')):.4f}, "
          f"checkpoint {result.checkpoint}")
    if args.export is not None:
        metadata = export_shipped(result.checkpoint, args.export, init=cfg.init)
        print(f"exported step {metadata['step']} (seed {metadata['seed']}) to {args.export}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
