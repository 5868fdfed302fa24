"""Open a source's container safely: real video containers only (never a playlist that names other
files), every failure a `BadVideo` that says what is wrong with the file; and the video stream and
the decoder that read it."""

from __future__ import annotations

import os
from typing import BinaryIO

import av

from pipelines.media.diagnose import diagnose
from pipelines.media.video_info import BadVideo

# otherwise pick the demuxer by content, whatever the extension: a text file `x.mp4` holding
# `ffconcat version 1.0` / `file other.mp4` opens as `concat` and reads its neighbours (an HLS or
# other playlist likewise), and raw elementary streams (h264, hevc, m2v) carry no timestamps.
VIDEO_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpeg", "mpegts", "asf", "flv", "dv", "mxf",
                  "gxf", "ogg", "rm", "nut", "ivf", "wtv")
_PLAYLISTS = {b"ffconcat": "an FFmpeg concat playlist", b"#EXTM3U": "an HLS/M3U playlist"}


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream; cover art (an attached picture) is a video stream too in FFmpeg."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise BadVideo("no video stream (audio-only or data-only file)")


def decoder(stream: av.video.stream.VideoStream) -> av.codec.context.CodecContext:
    """What decodes `stream`'s packets: FFmpeg's default decoder, except for VP9 with an alpha channel
    (WebM's `alpha_mode`), whose alpha only libvpx's decoder reads (from the Matroska BlockAdditional
    each packet carries; FFmpeg's own vp9 decoder ignores it). Make one per pass: it holds state."""
    context = stream.codec_context
    if context.codec.name == "vp9" and stream.metadata.get("alpha_mode") == "1":
        alpha = av.CodecContext.create("libvpx-vp9", "r")
        alpha.extradata = context.extradata
        alpha.thread_type = "AUTO"
        return alpha
    return context


def open_container(f: BinaryIO) -> av.container.InputContainer:
    """`av.open` with every failure turned into a `BadVideo` that says what is wrong with the file."""
    size = _file_size(f)
    if size == 0:
        raise BadVideo("empty file (0 bytes)")
    # Look at the file's own structure first: FFmpeg says only "moov atom not found" or "Invalid
    # data" for a cut-off upload. This must run before av.open, which then owns the file position.
    kind, reason = diagnose(f, size)
    if reason:
        raise BadVideo(reason)
    try:
        return av.open(f, "r", options={"format_whitelist": ",".join(VIDEO_DEMUXERS)})
    except av.error.ArgumentError as e:  # what FFmpeg says when the whitelist refuses the demuxer
        if kind:  # or a container diagnose knows, too damaged for its own demuxer
            raise BadVideo(f"damaged {kind} file ({ffmpeg_text(e)})") from e
        f.seek(0)
        head = f.read(16).lstrip(b"\xef\xbb\xbf")
        what = next((name for magic, name in _PLAYLISTS.items() if head.startswith(magic)), "a format")
        raise BadVideo(f"refused: the file is {what}, not one of the video containers the job reads "
                       f"(a playlist may name other files; they are never opened)") from e
    except av.error.FFmpegError as e:
        if kind:
            raise BadVideo(f"damaged {kind} file ({ffmpeg_text(e)})") from e
        raise BadVideo(f"not a recognised video container ({ffmpeg_text(e)})") from e


def _file_size(f: BinaryIO) -> int:
    pos = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return size


def ffmpeg_text(e: Exception) -> str:
    """FFmpeg's own words for an error (PyAV keeps them in `strerror`), for a ledger reason."""
    return getattr(e, "strerror", None) or str(e)
