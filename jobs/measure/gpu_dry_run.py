"""Run the official preset's whole restore path at full size on a stand-in GPU (the meta device: nothing
is computed) and print, per case, the live device memory per phase, the planner's estimate, the FLOPs
and the largest attention batch; exit 1 if a case faults (an op CUDA would refuse) or exceeds the budget.

    python jobs/measure/gpu_dry_run.py                      # 480p x4 and 1080p x2, 24 GiB, bf16
    python jobs/measure/gpu_dry_run.py --case 720p-x4 --budget-gib 80

Random weights on meta (the official preset's shapes: 2.04 B denoiser, ViT-H text tower, SVD VAE with
our tiled settings); 32 frames, the restore job's default window. See star_model/meta_run.py for what
is checked and how the device bytes are counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import torch  # noqa: E402

from star_model.meta_run import META, PHASES, DeviceFault, device_bytes, planned_config, run_on_meta  # noqa: E402
from star_model.presets import build_models, get_preset  # noqa: E402
from star_model.restore import StarRestorer  # noqa: E402

CASES = {"480p-x4": (480, 854, 4), "1080p-x2": (1080, 1920, 2), "720p-x4": (720, 1280, 4)}
GIB = 2**30


def run_case(name: str, frames: int, budget: int) -> tuple[bool, str]:
    height, width, scale = CASES[name]
    preset = get_preset("official")
    with torch.device(META):
        models = build_models(preset, None, device=META, dtype=torch.bfloat16)
    denoiser, text, vae = models
    weights = device_bytes([denoiser, text.model, vae.model])
    config, plan = planned_config(StarRestorer(*models, preset.restore_config(scale=scale)), frames, height, width,
                                  budget - weights)
    restorer = StarRestorer(*models, config)
    latent_tile, estimate = config.tile, plan.estimated_bytes
    started = time.perf_counter()
    try:
        _, report = run_on_meta(restorer, frames, height, width)
    except DeviceFault as fault:
        return False, f"{name}: FAULT {fault}"
    phases = "  ".join(f"{phase} {report.peaks.get(phase, 0) / GIB:.2f}" for phase in PHASES)
    sampler = report.above_weights("sampler")
    fits = report.peak <= budget
    line = (f"{name} ({width * scale}x{height * scale}, {frames} frames, window {config.window}, tile {latent_tile}): "
            f"peak GiB per phase (weights {report.weights_bytes / GIB:.2f}): {phases}; sampler above weights "
            f"{sampler / GIB:.2f}, planner {estimate / GIB:.2f} ({estimate / sampler:.2f}x); "
            f"{report.flops / 1e15:.1f} PFLOP; largest attention batch {report.largest_attention_batch}; "
            f"host syncs {report.syncs}; {'fits' if fits else 'EXCEEDS'} {budget / GIB:.0f} GiB; "
            f"{time.perf_counter() - started:.0f} s on this CPU")
    return fits, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: 480p-x4 and 1080p-x2")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--budget-gib", type=float, default=24.0, help="device memory of the card (default 24)")
    args = parser.parse_args(argv)
    ok = True
    for name in args.case or ["480p-x4", "1080p-x2"]:
        fits, line = run_case(name, args.frames, int(args.budget_gib * GIB))
        print(line, flush=True)
        ok &= fits
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
