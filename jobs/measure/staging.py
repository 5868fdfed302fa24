"""Measure codecs for the restore job's staging segments (restored windows at output resolution): MiB
per frame, encode and decode milliseconds per frame, and PSNR against the frames for the lossy ones.
The frames are a real clip upscaled with bicubic to 1080p and 4K, so their detail is realistic.

    python jobs/measure/staging.py --clip ../shared/media/lq/seedvr2_Mustache_640x360.mp4 --frames 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # a checkout, uninstalled

from pipelines.media.frames import read_frames  # noqa: E402
from star_model.bicubic import BicubicRestorer  # noqa: E402
from star_model.restore import RestoreConfig  # noqa: E402


@dataclass(frozen=True)
class Candidate:
    name: str
    codec: str
    pix_fmt: str  # what the encoder is given (converted from rgb24 by FFmpeg's swscale)
    options: dict[str, str] = field(default_factory=dict)
    threads: int = 0  # 0: FFmpeg's choice
    thread_type: str = "AUTO"  # FFV1 encodes its slices on threads only with SLICE


CANDIDATES = (
    Candidate("ffv1 bgr0 (before; deep colour, alpha)", "ffv1", "bgr0", {"level": "3", "slices": "4"}),
    Candidate("ffv1 bgr0 slices 16, 2 threads", "ffv1", "bgr0", {"level": "3", "slices": "16"}, threads=2,
              thread_type="SLICE"),
    Candidate("ffv1 bgr0 level 1 (no slices)", "ffv1", "bgr0", {"level": "1"}),
    Candidate("x264rgb qp0 ultrafast", "libx264rgb", "bgr24", {"qp": "0", "preset": "ultrafast"}),
    Candidate("x264rgb qp0 superfast", "libx264rgb", "bgr24", {"qp": "0", "preset": "superfast"}),
    Candidate("x264rgb qp0 veryfast", "libx264rgb", "bgr24", {"qp": "0", "preset": "veryfast"}),
    Candidate("x264 yuv444p crf12 ultrafast", "libx264", "yuv444p", {"crf": "12", "preset": "ultrafast"}),
    Candidate("x264 yuv444p crf12 superfast (staging)", "libx264", "yuv444p", {"crf": "12", "preset": "superfast"}),
    Candidate("x264 yuv420p crf12 superfast", "libx264", "yuv420p", {"crf": "12", "preset": "superfast"}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=str(Path(__file__).resolve().parents[3] / "shared/media/lq/"
                                               "seedvr2_Mustache_640x360.mp4"))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--heights", default="1080,2160", help="output heights, comma separated")
    args = parser.parse_args()
    source = read_frames(args.clip, 0, args.frames)  # (F, h, w, 3) uint8
    print(f"{args.frames} frames of {args.clip} ({source.shape[2]}x{source.shape[1]}), upscaled with bicubic")
    print("| size | codec | MiB/frame | encode ms/frame | decode ms/frame | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for height in (int(h) for h in args.heights.split(",")):
        if height % source.shape[1]:
            raise SystemExit(f"--heights {height}: not a whole multiple of the clip's {source.shape[1]} rows")
        frames = BicubicRestorer(RestoreConfig(scale=height // source.shape[1]))(source)
        for candidate in CANDIDATES:
            size, encode_s, decode_s, quality = measure(candidate, frames)
            n = len(frames)
            print(f"| {frames.shape[2]}x{frames.shape[1]} | {candidate.name} | {size / n / 2**20:.2f} | "
                  f"{1000 * encode_s / n:.0f} | {1000 * decode_s / n:.0f} | {quality} |", flush=True)


def measure(candidate: Candidate, frames_fhwc_u8: np.ndarray) -> tuple[int, float, float, str]:
    """(bytes, encode seconds, decode seconds, "exact" or the PSNR) of `frames` in Matroska."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "segment.mkv"
        started = time.perf_counter()
        encode(candidate, frames_fhwc_u8, path)
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        with av.open(str(path)) as container:
            decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        decode_s = time.perf_counter() - started
        size = path.stat().st_size
    if np.array_equal(decoded, frames_fhwc_u8):
        return size, encode_s, decode_s, "exact"
    mse = np.mean((decoded.astype(np.float64) - frames_fhwc_u8) ** 2)
    return size, encode_s, decode_s, f"{10 * np.log10(255 ** 2 / mse):.1f}"


def encode(candidate: Candidate, frames_fhwc_u8: np.ndarray, path: Path) -> None:
    _, height, width, _ = frames_fhwc_u8.shape
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream(candidate.codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, candidate.pix_fmt
        stream.options = dict(candidate.options)
        stream.codec_context.thread_count = candidate.threads
        stream.codec_context.thread_type = candidate.thread_type
        for i, rgb in enumerate(frames_fhwc_u8):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


if __name__ == "__main__":
    main()
