"""Probe a source video with PyAV: streams, timing, an exact frame count, rotation, and a clear
`BadVideo` reason for inputs that cannot be restored (the first thing the scenes stage runs). What it
finds is a `VideoInfo` (video_info.py, described by describe.py from one demux pass of packet_log.py);
the field order of an interlaced source is field_order.py's."""

from __future__ import annotations

import av
import numpy as np

from pipelines.media.input_container import open_container, video_stream
from pipelines.media.packet_log import PacketLog
from pipelines.media.video_info import BadVideo, VideoInfo
from pipelines.storage import Source, open_input


def probe(src: Source, *, max_pixels: int | None = None) -> VideoInfo:
    """Describe `src`; raise `BadVideo` for empty, non-video, truncated or undecodable files, and for
    frames larger than `max_pixels` (width x height), before one of them is decoded."""
    return probe_timestamps(src, max_pixels=max_pixels)[0]


def probe_timestamps(src: Source, *, max_pixels: int | None = None) -> tuple[VideoInfo, np.ndarray]:
    """`probe` plus the pts of every frame in presentation order, `(frame_count,)` int64.

    Frame i of the video (the index `read_frames` and the scene list use) is the frame whose pts is
    `timestamps[i]`. The pass demuxes every packet but decodes only until the first picture
    (`media.survey` decodes them all, for scene detection, in the same pass).
    """
    with open_input(src) as f:
        container = open_container(f)
        try:
            packets = PacketLog(checked_stream(container, max_pixels))
            packets.demux(container)
            return packets.describe(container)
        finally:
            container.close()


def checked_stream(container: av.container.InputContainer, max_pixels: int | None) -> av.video.stream.VideoStream:
    """The video stream, once its header says its frames are within `max_pixels` (width x height) and
    that its alpha channel, if any, can be decoded."""
    stream = video_stream(container)
    if stream.metadata.get("alpha_mode") == "1" and stream.codec_context.codec.name != "vp9":
        raise BadVideo(f"{stream.codec_context.codec.name} with an alpha channel (WebM alpha_mode): no decoder here "
                       f"reads its alpha, and restoring the colour alone would lose the transparency")
    width, height = stream.codec_context.width, stream.codec_context.height
    if max_pixels is not None and width * height > max_pixels:
        # Checked from the headers, before a frame is decoded: a forged 60000x60000 header would
        # otherwise have the decoder allocate gigabytes here, and the GPU stage far more.
        raise BadVideo(f"frames of {width}x{height} ({width * height:,} pixels) are above the limit of "
                       f"{max_pixels:,} pixels (--max-frame-pixels)")
    return stream
