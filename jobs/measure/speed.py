"""Benchmark restoration, official-faithful settings against ours, and print measured ratios.

    python jobs/measure/speed.py                  # GPU: official preset at 480p->x4 and 1080p->x2
    python jobs/measure/speed.py --preset tiny    # CPU: the same comparison on the TINY preset
    python jobs/measure/speed.py --preset nano    # CPU: nano's shipped weights at 360p->x4 and 480p->x2

Random weights (a forward costs the same whatever the weights), except nano, which runs its shipped
weights with its own settings only (the official settings are not nano's). Each case runs in a fresh
process, so peak memory does not leak from one case into the next. FLOPs are counted by running the
same restore with the plan the timed run used on the meta device (`star_model/meta_run.py`: nothing is
computed); MFU is those FLOPs per second over the GPU's dense bf16/fp16 peak, where the card is known.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from jobs.measure.comparison import settings_for  # noqa: E402
from star_model.meta_run import META, run_on_meta  # noqa: E402
from star_model.presets import build_models, get_preset, load_restorer, restore_settings  # noqa: E402
from star_model.restore import StarRestorer  # noqa: E402


class Case(NamedTuple):
    name: str  # e.g. "480p x4"
    height: int  # input size
    width: int
    scale: int
    frames: int


class Measurement(NamedTuple):
    case: str
    settings: str  # "official" or "ours"
    seconds_per_frame: float | None  # None: did not fit in memory
    peak_bytes: int | None
    note: str = ""
    flops_per_frame: float | None = None  # of the timed restore, counted on the meta device


# Dense bf16/fp16 tensor-core peaks from the vendors' datasheets, by the name the device reports (the
# PCIe H100 before the SXM one it would also match).
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


GPU_CASES = [Case("480p x4", 480, 854, 4, 32), Case("1080p x2", 1080, 1920, 2, 32)]
CPU_CASES = [Case("64p x4", 64, 112, 4, 4), Case("128p x2", 128, 224, 2, 4)]
NANO_CASES = [Case("360p x4", 360, 640, 4, 4), Case("480p x2", 480, 854, 2, 4)]


def restorer_for(preset_name: str, settings: str, scale: int, steps: int | None, device: torch.device) -> StarRestorer:
    """Random weights with the settings of the official inference (fp16 as its `.half()`, whole-canvas
    VAE, 32-frame hard-cut windows) or of ours (bf16, tiled VAE, planner-chosen windows and tiles)."""
    if preset_name == "nano":
        return load_restorer("nano", config=restore_settings("nano", scale, steps), device=device)
    sampler = {} if steps is None else dict(solver_mode="normal", steps=steps)
    gpu = device.type == "cuda"
    config, dtype, vae = settings_for(settings, scale, **sampler)
    preset = get_preset(preset_name)
    if preset.name != "tiny":  # the tiny VAE has its own shape; tiling settings do not apply to it
        preset = dataclasses.replace(preset, vae=vae)
    models = build_models(preset, None, device=device, dtype=dtype if gpu else torch.float32, scale=scale)
    return StarRestorer(*models, config)


def measure(preset_name: str, case: Case, settings: str, steps: int | None, device_name: str, queue) -> None:
    device = torch.device(device_name)
    restorer = restorer_for(preset_name, settings, case.scale, steps, device)
    frames = np.random.default_rng(0).integers(0, 256, (case.frames, case.height, case.width, 3), dtype=np.uint8)
    restorer(frames[:1, :16, :16], "warm-up")  # kernels, allocator, text cache
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        restorer(frames, "a good video")
    except torch.OutOfMemoryError as exc:
        queue.put(Measurement(case.name, settings, None, None, f"out of memory: {str(exc).splitlines()[0]}"))
        return
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    seconds = time.perf_counter() - start
    plan = restorer.last_plan.describe() if restorer.last_plan else "explicit window, whole frame"
    queue.put(Measurement(case.name, settings, seconds / case.frames, peak, plan,
                          None if preset_name == "nano" else
                          counted_flops(preset_name, settings, case, steps, restorer) / case.frames))


def counted_flops(preset_name: str, settings: str, case: Case, steps: int | None, timed: StarRestorer) -> int:
    """The FLOPs of the restore `timed` just made, counted on meta with the window and tile it used."""
    restorer = restorer_for(preset_name, settings, case.scale, steps, META)
    plan = timed.last_plan
    if plan is not None:
        whole = (2**31, 2**31)  # no tile: the restorer clamps a tile to the frame
        restorer.config = restorer.config.replace(window=plan.latent_window, tile=plan.tile or whole)
    return run_on_meta(restorer, case.frames, case.height, case.width)[1].flops


def mfu(result: Measurement, device_name: str) -> str:
    peak = next((flops for name, flops in PEAK_FLOPS.items() if name in device_name), None)
    if peak is None or result.flops_per_frame is None or result.seconds_per_frame is None:
        return "-"
    return f"{100 * result.flops_per_frame / result.seconds_per_frame / peak:.1f}%"


def run(preset_name: str, cases: list[Case], device_name: str, steps: int | None) -> list[Measurement]:
    """Every case with official and our settings (nano: its own only), each in a fresh spawned process."""
    context, results = mp.get_context("spawn"), []
    for case in cases:
        for settings in ("ours",) if preset_name == "nano" else ("official", "ours"):
            queue = context.Queue()
            process = context.Process(target=measure, args=(preset_name, case, settings, steps, device_name, queue))
            process.start()
            process.join()
            failed = process.exitcode != 0 and queue.empty()
            results.append(Measurement(case.name, settings, None, None, f"process exited {process.exitcode}")
                           if failed else queue.get())
    return results


def ratio_line(official: Measurement, ours: Measurement) -> str:
    if official.seconds_per_frame is None or ours.seconds_per_frame is None:
        return f"{ours.case}: no ratio (official: {official.note or 'ok'}; ours: {ours.note or 'ok'})"
    return (f"{ours.case}: ours is {official.seconds_per_frame / ours.seconds_per_frame:.2f}x faster per output "
            f"frame and uses {official.peak_bytes / ours.peak_bytes:.2f}x less peak memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["official", "tiny", "nano"], default=None,
                        help="default: official on a GPU, tiny on CPU")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 32 GPU, 4 CPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler evaluations in 'normal' mode; default: the official fast schedule (14)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    preset = args.preset or ("official" if device == "cuda" else "tiny")
    cases = NANO_CASES if preset == "nano" else GPU_CASES if device == "cuda" else CPU_CASES
    if args.frames:
        cases = [c._replace(frames=args.frames) for c in cases]

    weights = "shipped" if preset == "nano" else "random"
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"preset {preset} ({weights} weights) on {device_name}, torch {torch.__version__}")
    results = run(preset, cases, device, args.steps)
    print(f"{'case':10s} {'settings':9s} {'s/frame':>9s} {'peak GiB':>9s} {'TFLOP/frame':>12s} {'MFU':>6s}  plan")
    for r in results:
        spf = f"{r.seconds_per_frame:9.3f}" if r.seconds_per_frame is not None else f"{'-':>9s}"
        peak = f"{r.peak_bytes / 2**30:9.2f}" if r.peak_bytes is not None else f"{'-':>9s}"
        flops = f"{r.flops_per_frame / 1e12:12.2f}" if r.flops_per_frame is not None else f"{'-':>12s}"
        print(f"{r.case:10s} {r.settings:9s} {spf} {peak} {flops} {mfu(r, device_name):>6s}  {r.note}")
    if preset != "nano":
        for official, ours in zip(results[::2], results[1::2]):
            print(ratio_line(official, ours))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
