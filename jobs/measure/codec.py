"""Measure nano's latent codec candidates on the held-out clips: pixel-unshuffle (what nano uses) against
a small diffusers AutoencoderKL trained here for a few minutes, by reconstruction PSNR and speed.

    python jobs/measure/codec.py --train data/nano-train --media ../shared/media --steps 300

Prints one line per codec: parameters, luma PSNR of decode(encode(x)) on the held-out clips (first
--frames frames, centre crop 168x320; inf where the uint8 frames come back identical), and
milliseconds per frame for encode + decode on this machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from pipelines.evaluate.quality import psnr_y  # noqa: E402
from pipelines.finetune.stills import HELD_OUT  # noqa: E402
from pipelines.media.frames import read_first_frames  # noqa: E402
from star_model.codec import NANO, PixelCodec  # noqa: E402

CROP = (168, 320)


def frames_of(path: Path, count: int) -> np.ndarray:
    frames = read_first_frames(str(path), count)
    height, width = min(CROP[0], frames.shape[1]) // 8 * 8, min(CROP[1], frames.shape[2]) // 8 * 8
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return frames[:, top:top + height, left:left + width]


def to_signed(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_u8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def small_autoencoder(latent_channels: int) -> AutoencoderKL:
    """An SD-style KL autoencoder at a small width, downsampling by 4 like nano's codec."""
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32)


def train_autoencoder(model: AutoencoderKL, clips: list[np.ndarray], steps: int, seed: int) -> float:
    """L1 reconstruction plus a small KL term, AdamW, random 64x64 crops of 8 frames; returns seconds."""
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = []
        for _ in range(8):
            clip = clips[rng.integers(len(clips))]
            f, y, x = rng.integers(len(clip)), rng.integers(clip.shape[1] - 63), rng.integers(clip.shape[2] - 63)
            batch.append(clip[f, y:y + 64, x:x + 64])
        x = to_signed(np.stack(batch))
        posterior = model.encode(x).latent_dist
        out = model.decode(posterior.sample()).sample
        loss = (out - x).abs().mean() + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  autoencoder step {step + 1}/{steps}: L1 {float(loss.detach()):.4f}", flush=True)
    model.eval()
    return time.perf_counter() - started


@torch.no_grad()
def measure(name: str, encode, decode, params: int, clips: list[np.ndarray]) -> None:
    scores, seconds, frames = [], 0.0, 0
    for clip in clips:
        x = to_signed(clip)
        started = time.perf_counter()
        out = decode(encode(x))
        seconds += time.perf_counter() - started
        frames += len(clip)
        restored = to_u8(out)
        scores.append(math.inf if np.array_equal(restored, clip) else psnr_y(restored, clip))
    print(f"{name:34s} params {params:>9,d}  held-out luma PSNR {np.mean(scores):7.2f} dB  "
          f"{1000 * seconds / frames:8.2f} ms/frame (encode+decode, {clips[0].shape[2]}x{clips[0].shape[1]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path, help="nano's training folder (jobs/nano_data.py)")
    parser.add_argument("--media", required=True, type=Path, help="the shared media folder with the held-out clips")
    parser.add_argument("--steps", type=int, default=300, help="autoencoder training steps")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    held_out = [frames_of(args.media / rel, args.frames) for rel in HELD_OUT]
    training = [frames_of(p, 24) for p in sorted(args.train.glob("*.mp4"))]
    print(f"held out: {', '.join(HELD_OUT)}; autoencoder training clips: {len(training)}")

    codec = PixelCodec(NANO)
    measure(f"pixel-unshuffle x{NANO.factor} (nano)", codec.encode, codec.decode, 0, held_out)
    for channels in (4,):
        model = small_autoencoder(channels)
        seconds = train_autoencoder(model, training, args.steps, args.seed)
        params = sum(p.numel() for p in model.parameters())
        measure(f"AutoencoderKL x4, {channels} ch, {args.steps} steps", lambda x: model.encode(x).latent_dist.mode(),
                lambda z: model.decode(z).sample, params, held_out)
        print(f"  (trained in {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
