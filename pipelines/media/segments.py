"""The staging segments the restore actors write, one per restored window, and the assembler reads back:
H.264 4:4:4 near-lossless for 8-bit frames, lossless FFV1 for deep colour and alpha sources."""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from pipelines.media.frames import rgb_format
from pipelines.media.video_info import BadVideo
from pipelines.storage import Source, atomic_output, open_input


def write_segment(frames_fhwc: np.ndarray, url: str | os.PathLike, fps: Fraction | float, *,
                  lossless: bool = False) -> None:
    """Encode a restored window in Matroska and put it at `url` atomically: H.264 4:4:4 at crf 12 for
    8-bit frames, lossless FFV1 for 16-bit ones (a deep-colour source) or where `lossless` (an output
    that is itself lossless: a source with alpha).

    Why H.264 4:4:4 crf 12 (measured by jobs/measure/staging.py on a real clip upscaled with bicubic):
    about a sixth of FFV1's bytes per frame (0.10 against 0.59 MiB at 1080p, 0.34 against 1.89 MiB at
    4K), as fast to encode and faster to decode, at 48-50 dB PSNR to the restored frames: far below
    what the final encode (H.264 4:2:0, crf 16) loses, and no chroma subsampling before the windows are
    blended. Lossless H.264 (libx264rgb, qp 0) is larger than FFV1. FFV1 with 16-bit planar RGB
    (`gbrp16le`) reads back bit-exact as rgb48le, and with `bgr0` bit-exact as rgb24. Timestamps in the
    segment are plain frame numbers: the assembler takes the real ones from the source and checks
    each segment's frame count against its window.
    """
    if frames_fhwc.ndim != 4 or frames_fhwc.shape[-1] != 3 or frames_fhwc.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"frames must be (F, H, W, 3) uint8 or uint16, got {frames_fhwc.shape} {frames_fhwc.dtype}")
    _, height, width, _ = frames_fhwc.shape
    deep = frames_fhwc.dtype == np.uint16
    rate = Fraction(fps).limit_denominator(1_000_000)
    time_base = 1 / rate
    with atomic_output(url) as path:
        with av.open(path, "w", format="matroska") as out:
            if deep or lossless:
                stream = out.add_stream("ffv1", rate=rate)
                # FFV1's 8-bit RGB layout is bgr0 (gbrp is only offered at > 8 bits)
                stream.pix_fmt = "gbrp16le" if deep else "bgr0"
                stream.options = {"level": "3", "slices": "4"}  # slices: the encoder uses threads
            else:
                stream = out.add_stream("libx264", rate=rate)
                stream.pix_fmt = "yuv444p"
                stream.options = {"crf": "12", "preset": "superfast"}
            stream.width, stream.height = width, height
            stream.time_base = time_base
            for i, rgb in enumerate(frames_fhwc):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if deep else "rgb24")
                frame.pts, frame.time_base = i, time_base
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))


def iter_segment(url: Source) -> Iterator[np.ndarray]:
    """The frames of a staging segment in order, each `(H, W, 3)` uint8 RGB (uint16 if written so)."""
    with open_input(url) as f:
        try:
            with av.open(f, "r") as container:
                for frame in container.decode(video=0):
                    yield frame.to_ndarray(format=rgb_format(frame.format))
        except av.error.FFmpegError as e:
            raise BadVideo(f"staging segment {url} cannot be read ({e})") from e
