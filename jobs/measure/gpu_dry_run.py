"""Run the official preset's whole restore path at full size on a stand-in GPU (the meta device: nothing
is computed) and print, per case, the live device memory per phase beside the planner's estimate, the
FLOPs and the largest attention batch; exit 1 if a case faults (an op CUDA would refuse), exceeds the
budget, or finds the planner below a phase's peak or more than 25% above it.

    python jobs/measure/gpu_dry_run.py                      # 480p x4 and 1080p x2, 24 GiB, bf16, ours
    python jobs/measure/gpu_dry_run.py --case 720p-x4 --budget-gib 80
    python jobs/measure/gpu_dry_run.py --settings official  # the official inference's memory behaviour

Random weights on meta (the official preset's shapes: 2.04 B denoiser, ViT-H text tower, SVD VAE);
32 frames, the restore job's default window. `--settings` picks ours (bf16, 768-pixel VAE tiles) or the
official inference's (fp16, whole-canvas VAE, white canvas padding: `jobs/measure/comparison.py`). See
star_model/meta_run.py for what is checked and how the device bytes are counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import torch  # noqa: E402

from jobs.measure.comparison import SETTINGS, settings_for  # noqa: E402
from star_model.memory import PHASES  # noqa: E402
from star_model.meta_run import META, DeviceFault, device_bytes, planned_config, run_on_meta  # noqa: E402
from star_model.presets import build_models, get_preset  # noqa: E402
from star_model.restore import StarRestorer  # noqa: E402

CASES = {"480p-x4": (480, 854, 4), "1080p-x2": (1080, 1920, 2), "720p-x4": (720, 1280, 4)}
GIB = 2**30
CALIBRATION = (1.0, 1.25)  # planner / measured, per phase: above, by at most a quarter


class CaseResult(NamedTuple):
    line: str
    fits: bool  # no fault and the peak within the budget
    calibrated: bool  # every phase's estimate within CALIBRATION of its measured peak
    ratios: dict[str, float]  # phase -> planner / measured, above the weights


def run_case(name: str, frames: int, budget: int, settings: str = "ours",
             size: tuple[int, int, int] | None = None) -> CaseResult:
    """One case on meta: `name` from CASES, or any label with `size` = (height, width, scale)."""
    height, width, scale = size or CASES[name]
    config, dtype, vae = settings_for(settings, scale)
    preset = dataclasses.replace(get_preset("official"), vae=vae)
    with torch.device(META):
        models = build_models(preset, None, device=META, dtype=dtype)
    denoiser, text, vae_model = models
    weights = device_bytes([denoiser, text.model, vae_model.model])
    config, plan, estimates = planned_config(StarRestorer(*models, config), frames, height, width, budget - weights)
    restorer = StarRestorer(*models, config)
    started = time.perf_counter()
    title = f"{name} {settings} ({width * scale}x{height * scale}, {frames} frames, window {config.window}, tile {config.tile})"
    try:
        _, report = run_on_meta(restorer, frames, height, width)
    except DeviceFault as fault:
        return CaseResult(f"{title}: FAULT {fault}", False, False, {})
    ratios = {phase: estimates[phase] / max(report.above_weights(phase), 1) for phase in PHASES}
    calibrated = all(CALIBRATION[0] <= ratio <= CALIBRATION[1] for ratio in ratios.values())
    phases = "; ".join(f"{phase} {report.above_weights(phase) / GIB:.2f} (planner {estimates[phase] / GIB:.2f}, "
                       f"{ratios[phase]:.2f}x)" for phase in PHASES)
    fits = report.peak <= budget
    line = (f"{title}: GiB above the weights ({report.weights_bytes / GIB:.2f}) at each phase's peak: {phases}; "
            f"peak {report.peak / GIB:.2f}, {'fits' if fits else 'EXCEEDS'} {budget / GIB:.0f} GiB; planner "
            f"{'within' if calibrated else 'OUTSIDE'} {CALIBRATION[0]:.2f}-{CALIBRATION[1]:.2f}x; "
            f"{report.flops / 1e15:.1f} PFLOP; largest attention batch {report.largest_attention_batch}; "
            f"host syncs {report.syncs}; {time.perf_counter() - started:.0f} s on this CPU")
    return CaseResult(line, fits, calibrated, ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="default: 480p-x4 and 1080p-x2")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--budget-gib", type=float, default=24.0, help="device memory of the card (default 24)")
    parser.add_argument("--settings", choices=SETTINGS, default="ours")
    args = parser.parse_args(argv)
    ok = True
    for name in args.case or ["480p-x4", "1080p-x2"]:
        result = run_case(name, args.frames, int(args.budget_gib * GIB), args.settings)
        print(result.line, flush=True)
        ok &= result.fits and result.calibrated
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
