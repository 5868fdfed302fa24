"""The alpha plane of a source with transparency: decoded beside the model's RGB (which never sees it)
and upscaled plainly, for the assembler to put back into the FFV1 output."""

from __future__ import annotations

import os
from collections.abc import Iterator

import av
import numpy as np

from pipelines.media.describe import display_rotation
from pipelines.media.frames import rgb_format
from pipelines.media.input_container import decoder, open_container, video_stream
from pipelines.media.video_info import BadVideo
from pipelines.storage import open_input


def iter_alpha(src: str | os.PathLike) -> Iterator[np.ndarray]:
    """The alpha plane of every frame of the video at `src` (its own file handle: the assembler reads
    the source beside it) in presentation order, upright, `(H, W)` uint8 (uint16 for deep colour)."""
    with open_input(src) as f:
        container = open_container(f)
        try:
            stream = video_stream(container)
            context = decoder(stream)
            frames = (frame for packet in container.demux(stream) for frame in context.decode(packet))
            for frame in frames:
                deep = rgb_format(frame.format) == "rgb48le"
                alpha = frame.to_ndarray(format="rgba64le" if deep else "rgba")[..., 3]
                rotation = display_rotation(stream, frame)
                yield np.ascontiguousarray(np.rot90(alpha, k=rotation // 90)) if rotation else alpha
        except av.error.FFmpegError as e:
            raise BadVideo(f"the alpha plane cannot be decoded ({e})") from e
        finally:
            container.close()


def upscale_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """A single plane (alpha) resized to `width` x `height` with swscale's bicubic filter: the plain
    upscale the model's RGB gets beside it (the model does not see transparency)."""
    gray = "gray16le" if plane.dtype == np.uint16 else "gray"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(plane), format=gray)
    return frame.reformat(width=width, height=height, interpolation="BICUBIC").to_ndarray()
