"""Measure the host memory (peak RSS) of restoring one 32-frame window, and print it.

    PYTHONPATH=. python jobs/measure_memory.py                 # 480p x4 and 1080p x2
    PYTHONPATH=. python jobs/measure_memory.py --case 1080p-x2 --chunk 32
    PYTHONPATH=. python jobs/measure_memory.py --frames 8 --divide 4   # input sides / 4: a quick look

The frame buffers at output resolution (pre-upscale, VAE encode and decode, colour fix, uint8) are
the same for every preset, so the `tiny` preset measures them on a CPU, with its VAE run on spatial
tiles (whole 4K frames put ~100k tokens through the VAE's mid-block attention: minutes per frame on
a CPU) and the denoiser on 66x64 latent tiles for one solver evaluation, so that what is measured is
the frame buffers, not the networks' activations. (Nano's latents are as large as its frames, 48
channels at 1/4 size, so on a CPU its sampler state would dominate the figure.) Each case runs in a
fresh process (`ru_maxrss` is a high-water mark); the parent stops a case that would take the
machine's last memory, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {"480p-x4": (480, 854, 4), "1080p-x2": (1080, 1920, 2)}
RESERVE_BYTES = 2 * 2**30  # a case is stopped when the machine has less than this available
CHILD = """
import dataclasses, json, resource, sys, time
import numpy as np
import torch
from star_model.presets import build_models, get_preset
from star_model.restore import RestoreConfig, StarRestorer
height, width, scale, frames, chunk = sys.argv[1:6]
height, width, scale, frames = int(height), int(width), int(scale), int(frames)
extra = {} if chunk == "auto" else {"host_chunk_frames": int(chunk)}
config = RestoreConfig(scale=scale, solver_mode="normal", steps=1, window=frames, tile=(66, 64), **extra)
tiny = get_preset("tiny")
vae = dataclasses.replace(tiny.vae, encode_tile_px=512, encode_overlap_px=64, decode_tile_latent=64,
                          decode_overlap_latent=8)
models = build_models(dataclasses.replace(tiny, vae=vae), None, device=torch.device("cpu"), dtype=torch.float32)
restorer = StarRestorer(*models, config)
video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
out = restorer(video, "a good video")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "out": list(out.shape)}))
"""


def measure(case: str, frames: int, chunk: str, divide: int) -> dict:
    """Run one case in a child process; its peak RSS, or why it was stopped."""
    import psutil

    height, width, scale = CASES[case]
    height, width = height // divide, width // divide
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(height), str(width), str(scale),
                              str(frames), chunk], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    while child.poll() is None:
        if psutil.virtual_memory().available < RESERVE_BYTES:
            child.kill()
            child.wait()
            return {"stopped": f"less than {RESERVE_BYTES / 2**30:.0f} GiB left on this machine"}
        time.sleep(0.2)
    if child.returncode:
        return {"stopped": f"exit code {child.returncode}"}
    return json.loads(child.stdout.read().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: every case")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--divide", type=int, default=1, help="divide the input sides by this")
    parser.add_argument("--chunk", default="auto", help="frames per host chunk (default: the planner's)")
    args = parser.parse_args()
    for case in args.case or list(CASES):
        height, width, scale = CASES[case]
        height, width = height // args.divide, width // args.divide
        result = measure(case, args.frames, args.chunk, args.divide)
        name = f"tiny {case} ({args.frames} frames {width}x{height} -> {width * scale}x{height * scale})"
        if "stopped" in result:
            print(f"{name}: stopped, {result['stopped']}")
            continue
        float_copy = args.frames * 3 * height * scale * width * scale * 4
        print(f"{name}: peak RSS {result['peak'] / 2**30:.2f} GiB ({result['before'] / 2**30:.2f} GiB before "
              f"the call; one float32 copy of the window at output size is {float_copy / 2**30:.2f} GiB), "
              f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
