"""Restoration benchmark: seconds per output frame and peak memory of one clip, official-faithful
settings against ours, each case in a fresh process so peaks do not leak between cases.

Random weights: a forward costs the same whatever the weights' values.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from star_model import vae as vae_configs
from star_model.presets import get_preset, random_restorer
from star_model.restore import RestoreConfig


@dataclass(frozen=True)
class Case:
    name: str  # e.g. "480p x4"
    height: int  # input size
    width: int
    scale: int
    frames: int


@dataclass(frozen=True)
class Measurement:
    case: str
    settings: str  # "official" or "ours"
    seconds_per_frame: float | None  # None: did not fit in memory
    peak_bytes: int | None
    note: str = ""


def settings(name: str, scale: int, steps: int | None, device: torch.device) -> tuple[RestoreConfig, torch.dtype, vae_configs.VaeConfig]:
    """(restore config, denoiser dtype, VAE config) of the official inference or of ours."""
    sampler = {} if steps is None else dict(solver_mode="normal", steps=steps)
    if name == "official":
        # fp16 weights as the official `.half()`; whole-canvas VAE; 32-frame hard-cut windows.
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        return RestoreConfig.official(scale=scale, **sampler), dtype, vae_configs.OFFICIAL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return RestoreConfig(scale=scale, **sampler), dtype, vae_configs.TILED


def _measure(preset_name: str, case: Case, setting: str, steps: int | None, device_name: str, queue) -> None:
    device = torch.device(device_name)
    config, dtype, vae_config = settings(setting, case.scale, steps, device)
    preset = get_preset(preset_name)
    if preset.name == "tiny":
        vae_config = preset.vae  # the tiny VAE has its own shape; tiling settings do not apply
    restorer = random_restorer(preset, config=config, device=device, dtype=dtype, vae_config=vae_config)
    frames = np.random.default_rng(0).integers(0, 256, (case.frames, case.height, case.width, 3), dtype=np.uint8)
    restorer(frames[:1, :16, :16], "warm-up")  # kernels, allocator, text cache
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        restorer(frames, "a good video")
    except torch.OutOfMemoryError as exc:
        queue.put(Measurement(case.name, setting, None, None, f"out of memory: {str(exc).splitlines()[0]}"))
        return
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    elapsed = time.perf_counter() - start
    plan = restorer.last_plan.describe() if restorer.last_plan else "explicit window, whole frame"
    queue.put(Measurement(case.name, setting, elapsed / case.frames, peak, plan))


def run(preset_name: str, cases: list[Case], device_name: str, steps: int | None = None) -> list[Measurement]:
    """Measure every case with official and our settings, each in a fresh spawned process."""
    context = mp.get_context("spawn")
    results = []
    for case in cases:
        for setting in ("official", "ours"):
            queue = context.Queue()
            process = context.Process(target=_measure, args=(preset_name, case, setting, steps, device_name, queue))
            process.start()
            process.join()
            if process.exitcode != 0 and queue.empty():
                results.append(Measurement(case.name, setting, None, None, f"process exited {process.exitcode}"))
            else:
                results.append(queue.get())
    return results


def ratios(results: list[Measurement]) -> list[str]:
    """One line per case: official / ours for time per frame and for peak memory."""
    lines = []
    for case in dict.fromkeys(r.case for r in results):
        official = next(r for r in results if r.case == case and r.settings == "official")
        ours = next(r for r in results if r.case == case and r.settings == "ours")
        if official.seconds_per_frame is None or ours.seconds_per_frame is None:
            lines.append(f"{case}: no ratio (official: {official.note or 'ok'}; ours: {ours.note or 'ok'})")
            continue
        lines.append(f"{case}: ours is {official.seconds_per_frame / ours.seconds_per_frame:.2f}x faster per "
                     f"output frame and uses {official.peak_bytes / ours.peak_bytes:.2f}x less peak memory")
    return lines
