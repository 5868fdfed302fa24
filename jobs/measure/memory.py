"""Measure the host memory (peak RSS) of restoring one 32-frame window, and print it.

    python jobs/measure/memory.py                 # 480p x4 and 1080p x2, stand-in networks
    python jobs/measure/memory.py --case 1080p-x2 --chunk 32   # one chunk: no streaming
    python jobs/measure/memory.py --real-vae --frames 8 --divide 4   # the real tiny networks, input sides / 4

What is measured is the restorer's frame buffers at output resolution (pre-upscale, padding, VAE
tiles and groups, float copies, colour fix, uint8), which are the same for every preset, on the
`tiny` preset on a CPU, the denoiser on 66x64 latent tiles for one solver evaluation.

By default the networks (the VAE's encoder and decoder, and the denoiser) are replaced by cheap
shape-faithful stand-ins (`stand_in_networks`), and the output line says so: on a CPU the real ones
would take hours for a 4K window (the VAE runs at output resolution, the denoiser on every latent
tile of every frame), and their activations, which live on the GPU in production, would be counted
as host memory. Every buffer of StarRestorer and VideoVae stays real. `--real-vae` runs the tiny
preset's real networks instead, the VAE on spatial tiles (whole 4K frames put ~100k tokens through
its mid-block attention). (Nano's latents are as large as its frames, 48 channels at 1/4 size, so on
a CPU its sampler state would dominate the figure.) Each case runs in a fresh process (`ru_maxrss`
is a high-water mark); the parent stops a case that would take the machine's last memory, and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from star_model.presets import build_models, get_preset  # noqa: E402
from star_model.restore import RestoreConfig, StarRestorer  # noqa: E402
from star_model.unet import StarDenoiser  # noqa: E402
from star_model.vae import VideoVae  # noqa: E402

CASES = {"480p-x4": (480, 854, 4), "1080p-x2": (1080, 1920, 2)}
RESERVE_BYTES = 2 * 2**30  # a case is stopped when the machine has less than this available


def stand_in_networks(denoiser: StarDenoiser, vae: VideoVae) -> None:
    """Replace the networks by cheap ones with the same shapes in and out: the VAE's encoder
    average-pools by the downsampling factor (mean; std a small constant), its decoder upsamples the
    first 3 latent channels (nearest) and bounds them with tanh; the denoiser's velocity is tanh(hint)."""
    f, channels = vae.downsample, vae.latent_channels

    def encode(x: torch.Tensor) -> SimpleNamespace:
        mean = F.avg_pool2d(x, f)[:, [c % 3 for c in range(channels)]]
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=torch.full_like(mean, 0.01)))

    def decode(z: torch.Tensor, num_frames: int) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.tanh(F.interpolate(z[:, :3], scale_factor=f, mode="nearest")))

    vae.model.encode, vae.model.decode = encode, decode
    denoiser.forward = lambda x, t, y, *, hint: torch.tanh(hint)


def restore_once(height: int, width: int, scale: int, frames: int, chunk: int | None, real_vae: bool) -> dict:
    """Restore one random window of `frames` frames of `width`x`height` in this process: RSS (bytes)
    before the call and its high-water mark after it, seconds, output shape."""
    config = RestoreConfig(scale=scale, solver_mode="normal", steps=1, window=frames, tile=(66, 64),
                           host_chunk_frames=chunk)
    tiny = get_preset("tiny")
    vae = dataclasses.replace(tiny.vae, encode_tile_px=512, encode_overlap_px=64, decode_tile_latent=64,
                              decode_overlap_latent=8)
    denoiser, text, video_vae = build_models(dataclasses.replace(tiny, vae=vae), None, device=torch.device("cpu"),
                                             dtype=torch.float32)
    if not real_vae:
        stand_in_networks(denoiser, video_vae)
    restorer = StarRestorer(denoiser, text, video_vae, config)
    video = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    out = restorer(video, "a good video")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"before": before, "peak": peak, "seconds": seconds, "out": list(out.shape)}


def measure(height: int, width: int, scale: int, frames: int, chunk: int | None = None,
            real_vae: bool = False) -> dict:
    """`restore_once` in a child process: its result, or why it was stopped."""
    case = json.dumps({"height": height, "width": width, "scale": scale, "frames": frames, "chunk": chunk,
                       "real_vae": real_vae})
    child = subprocess.Popen([sys.executable, __file__, "--child", case], stdout=subprocess.PIPE, text=True)
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
    parser.add_argument("--chunk", type=int, help="frames per host chunk (default: the planner's)")
    parser.add_argument("--real-vae", action="store_true",
                        help="run the tiny preset's real networks (VAE and denoiser), not the stand-ins")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one case as JSON: run it here, print the result
    args = parser.parse_args()
    if args.child:
        print(json.dumps(restore_once(**json.loads(args.child))))
        return
    networks = "real tiny networks" if args.real_vae else "stand-in networks"
    for case in args.case or list(CASES):
        height, width, scale = CASES[case]
        height, width = height // args.divide, width // args.divide
        result = measure(height, width, scale, args.frames, args.chunk, args.real_vae)
        chunk = f"chunk {args.chunk}" if args.chunk else "planner's chunks"
        name = (f"tiny {case} ({args.frames} frames {width}x{height} -> {width * scale}x{height * scale}, "
                f"{networks}, {chunk})")
        if "stopped" in result:
            print(f"{name}: stopped, {result['stopped']}")
            continue
        float_copy = args.frames * 3 * height * scale * width * scale * 4
        print(f"{name}: peak RSS {result['peak'] / 2**30:.2f} GiB ({result['before'] / 2**30:.2f} GiB before "
              f"the call; one float32 copy of the window at output size is {float_copy / 2**30:.2f} GiB), "
              f"{result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
