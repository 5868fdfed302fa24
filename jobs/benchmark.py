"""Benchmark restoration, official-faithful settings against ours, and print measured ratios.

    python jobs/benchmark.py                  # GPU: official preset at 480p->x4 and 1080p->x2
    python jobs/benchmark.py --preset tiny    # CPU: the same comparison on the TINY preset

Random weights (a forward costs the same whatever the weights). Each case runs in a fresh process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from star_model.benchmark import Case, ratios, run  # noqa: E402

GPU_CASES = [Case("480p x4", 480, 854, 4, 32), Case("1080p x2", 1080, 1920, 2, 32)]
CPU_CASES = [Case("64p x4", 64, 112, 4, 4), Case("128p x2", 128, 224, 2, 4)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["official", "tiny"], default=None,
                        help="default: official on a GPU, tiny on CPU")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 32 GPU, 4 CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler evaluations in 'normal' mode; default: the official fast schedule (14)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("official" if device == "cuda" else "tiny")
    cases = GPU_CASES if device == "cuda" else CPU_CASES
    if args.frames:
        cases = [Case(c.name, c.height, c.width, c.scale, args.frames) for c in cases]

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"preset {preset} (random weights) on {name}, torch {torch.__version__}")
    results = run(preset, cases, device, args.steps)
    print(f"{'case':10s} {'settings':9s} {'s/frame':>9s} {'peak GiB':>9s}  plan")
    for r in results:
        spf = f"{r.seconds_per_frame:9.3f}" if r.seconds_per_frame is not None else f"{'-':>9s}"
        peak = f"{r.peak_bytes / 2**30:9.2f}" if r.peak_bytes is not None else f"{'-':>9s}"
        print(f"{r.case:10s} {r.settings:9s} {spf} {peak}  {r.note}")
    for line in ratios(results):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
