"""Encode the restored picture: the output's video stream (media.output_format's codec) tagged with the
source's colours, each frame converted with the source's matrix and range at the source's own
timestamps (the output's clock), packets carrying the source frame durations."""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np

from pipelines.media.output_format import PictureEncoding
from pipelines.media.target_size import TargetSize
from pipelines.media.video_info import BadVideo, VideoInfo

# PyAV's reformatter knows these colour matrices; SMPTE 170M is BT.601 under another name.
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


def encoded_size(first: np.ndarray, info: VideoInfo, square_pixels: bool,
                 target: TargetSize | None = None) -> tuple[int, int]:
    """(width, height) of the encoded picture: the `target` size for the source's display shape
    (media.target_size), else the frames' size made even, widened or narrowed by the sample aspect
    ratio for square pixels (kept even: 4:2:0 needs it)."""
    if target is not None:
        return target.output_size(*info.display_size, info.upright_sar)
    height, width = first.shape[0] + first.shape[0] % 2, first.shape[1] + first.shape[1] % 2
    if square_pixels and info.upright_sar != 1:
        width = max(2, 2 * round(width * info.upright_sar / 2))
    return width, height


def encode(video: av.video.stream.VideoStream, frames: Iterator[np.ndarray], timestamps: np.ndarray,
           info: VideoInfo, family: str, shift: int) -> Iterator[av.Packet]:
    """Encode frame i at the source's pts of frame i less `shift` (the output's clock starts at the
    source's `shift`); packets carry the source frame durations."""
    time_base = info.time_base  # kept apart: the muxer rewrites video.time_base at the header
    timestamps = timestamps - shift
    ends = np.append(timestamps[1:], info.end_pts - shift)
    durations = {int(p): int(e - p) for p, e in zip(timestamps, ends)}

    def packets() -> Iterator[av.Packet]:
        count, size = 0, None
        for pts, rgb in zip(timestamps.tolist(), frames):
            size = size or (rgb.shape[0] + rgb.shape[0] % 2, rgb.shape[1] + rgb.shape[1] % 2)
            frame = _yuv_frame(_pad_even(rgb, size), info, video)
            frame.pts, frame.time_base, frame.duration = pts, time_base, durations[pts]
            count += 1
            yield from video.encode(frame)
        if count != len(timestamps):
            raise ValueError(f"got {count} frames for the source's {len(timestamps)}")
        yield from video.encode(None)

    first_dts = held = None
    for packet in packets():
        packet.duration = durations.get(packet.pts, packet.duration)
        first_dts = packet.dts if first_dts is None else first_dts
        if held is not None:
            yield held
        held = packet  # the last packet is held back to set its duration
    if held is not None and family == "mp4":
        # MP4 stores sample durations as dts steps and takes only the last one from a packet.
        # With B-frames the dts run ahead of the pts, so the last packet's duration is what makes
        # the track end exactly where the source's last frame ends.
        held.duration = (info.end_pts - shift - int(timestamps[0])) - (held.dts - first_dts)
    if held is not None:
        yield held


def add_video_stream(out: av.container.OutputContainer, info: VideoInfo, size: tuple[int, int],
                     encoding: PictureEncoding) -> av.video.stream.VideoStream:
    """The output's video stream, encoding `encoding` (media.output_format) at `size` on the source's
    clock, tagged with the source's colours."""
    video = out.add_stream(encoding.encoder, rate=info.fps)  # rate only guides x264's rate control
    video.pix_fmt = encoding.pix_fmt
    video.options = dict(encoding.options)
    if encoding.encoder == "libx265" and out.format.name != "matroska":
        video.codec_tag = "hvc1"  # what Apple's players need to play H.265 from MP4 or MOV
    video.width, video.height = size
    # The encoder must count in the source's time_base too: by default PyAV gives it 1/rate,
    # which rounds variable-rate pts onto a constant grid (and collides them).
    video.codec_context.time_base = info.time_base
    video.time_base = info.time_base
    # Tag the colours the source had; _yuv_frame converts with the same matrix and range.
    video.codec_context.colorspace = info.colorspace
    video.codec_context.color_range = info.color_range
    video.codec_context.color_primaries = info.color_primaries
    video.codec_context.color_trc = info.color_trc
    return video


def _yuv_frame(rgb: np.ndarray, info: VideoInfo, video: av.video.stream.VideoStream) -> av.VideoFrame:
    """RGB or RGBA (uint8, or uint16 for deep colour) -> the stream's pixel format and size, with the
    source's matrix and range (decoding used them to make the RGB). A change of size (square pixels, a
    target size) is Lanczos, in the same swscale pass."""
    layout = ("rgba64le", "rgba") if rgb.shape[-1] == 4 else ("rgb48le", "rgb24")
    frame = av.VideoFrame.from_ndarray(rgb, format=layout[0] if rgb.dtype == np.uint16 else layout[1])
    return frame.reformat(width=video.width, height=video.height, format=video.pix_fmt, interpolation="LANCZOS",
                          dst_colorspace=_MATRICES.get(info.colorspace), dst_color_range=info.color_range or None)


def _pad_even(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` padded to `size` (height, width: the first frame's, made even) by repeating the last row
    or column; a frame of another size is a source whose resolution changed."""
    pad = ((0, size[0] - rgb.shape[0]), (0, size[1] - rgb.shape[1]), (0, 0))
    if min(pad[0][1], pad[1][1]) < 0 or max(pad[0][1], pad[1][1]) > 1:
        raise BadVideo(f"resolution changes mid-stream (restored frames of {rgb.shape[1]}x{rgb.shape[0]} after "
                       f"{size[1]}x{size[0]}): not restored; split the file where the size changes")
    return rgb if not (pad[0][1] or pad[1][1]) else np.pad(rgb, pad, mode="edge")
