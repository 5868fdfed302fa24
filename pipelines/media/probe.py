"""Probe a source video with PyAV: streams, timing, an exact frame count, rotation, and a clear
`BadVideo` reason for inputs that cannot be restored (the first thing the scenes stage runs). What it
finds is a `VideoInfo` (video_info.py); the field order of an interlaced source is field_order.py's."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np

from pipelines.media.diagnose import diagnose
from pipelines.media.field_order import interlacing
from pipelines.media.video_info import BadVideo, StreamInfo, VideoInfo
from pipelines.storage import Source, open_input

log = logging.getLogger(__name__)

# The demuxers PyAV may pick for a source: real video containers only (FFmpeg's names). FFmpeg would
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
            raise BadVideo(f"damaged {kind} file ({_ffmpeg_text(e)})") from e
        f.seek(0)
        head = f.read(16).lstrip(b"\xef\xbb\xbf")
        what = next((name for magic, name in _PLAYLISTS.items() if head.startswith(magic)), "a format")
        raise BadVideo(f"refused: the file is {what}, not one of the video containers the job reads "
                       f"(a playlist may name other files; they are never opened)") from e
    except av.error.FFmpegError as e:
        if kind:
            raise BadVideo(f"damaged {kind} file ({_ffmpeg_text(e)})") from e
        raise BadVideo(f"not a recognised video container ({_ffmpeg_text(e)})") from e


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


class PacketLog:
    """What one demux pass learns of the video stream: every shown packet's pts, the latest end a
    packet claims, the first decoded frame, and a damaged container. Filled by `demux` (decoding
    until the first frame), or by `decode`, whose frames a caller consumes (scene detection)."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.stream = stream
        self.decoder = decoder(stream)
        self.pts: list[int] = []
        self.packet_end: int | None = None  # latest pts + duration any packet claims
        self.first_frame: av.VideoFrame | None = None
        # The decoder's picture format, size and field order as they were after the first frame (a
        # pass that decodes on would otherwise report the last frame's)
        self.coded: dict[str, Any] = {}
        self.damage: str | None = None  # why demuxing stopped early, if it did
        self.finished = False  # the demuxer reached the end (or damage)

    def demux(self, container: av.container.InputContainer) -> None:
        """Demux the rest of the stream, decoding only until the first frame."""
        if not self.finished:
            for packet in self._packets(container):
                if self.first_frame is None and _shown(packet):
                    self._first(_try_decode(self.decoder, packet))
        if self.first_frame is None:
            self._first(_try_decode(self.decoder, None))  # flush: a one-frame clip may sit in the delay

    def decode(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """Demux on from where the last pass stopped and decode every packet, as `container.decode`
        does: a packet that fails to decode raises FFmpegError (it is logged already; a new call goes
        on with the next packet)."""
        for packet in self._packets(container):
            frames = self.decoder.decode(packet)
            if frames and self.first_frame is None:
                self._first(frames[0])
            yield from frames

    def describe(self, container: av.container.InputContainer) -> tuple[VideoInfo, np.ndarray]:
        """The VideoInfo and the presentation-order pts of a finished pass; BadVideo for what it found."""
        if self.damage is not None:
            raise BadVideo(self.damage)
        return _describe(container, self.stream, self.pts, self.packet_end, self.first_frame, self.coded)

    def _first(self, frame: av.VideoFrame | None) -> None:
        if frame is not None:
            context = self.decoder
            self.first_frame = frame
            self.coded = dict(width=context.width, height=context.height, pix_fmt=context.pix_fmt,
                              field_order=context.field_order,
                              captions=frame.side_data.get(av.sidedata.sidedata.Type.A53_CC) is not None)

    def _packets(self, container: av.container.InputContainer) -> Iterator[av.Packet]:
        """The stream's packets from the demuxer's position, each logged before it is yielded (the
        flush packet at the end too, so a decoder gives up its delayed frames)."""
        try:
            for packet in container.demux(self.stream):
                if _shown(packet):
                    self._log(packet)
                yield packet
        except av.error.EOFError:
            pass
        except av.error.FFmpegError as e:
            self.damage = f"damaged container after {len(self.pts)} video packets ({_ffmpeg_text(e)})"
        self.finished = True

    def _log(self, packet: av.Packet) -> None:
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            raise BadVideo("video packets carry no timestamps; frames cannot be placed in time")
        self.pts.append(ts)
        if packet.duration:
            self.packet_end = max(self.packet_end or 0, ts + packet.duration)


def _shown(packet: av.Packet) -> bool:
    """Not the flush packet PyAV yields at the end, nor edit-list pre-roll (never a shown frame)."""
    return bool(packet.size) and not packet.is_discard


def _describe(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: list[int],
              packet_end: int | None, first_frame: av.VideoFrame | None, coded: dict[str, Any]
              ) -> tuple[VideoInfo, np.ndarray]:
    if not pts:
        raise BadVideo("video stream has no frames")
    if first_frame is None:
        raise BadVideo(f"no decodable video frames ({len(pts)} packets, none decodes)")

    ts = np.sort(np.asarray(pts, dtype=np.int64))
    # Pictures shown before the first one the decoder makes never decode: the leading B-frames of an
    # open GOP (a capture that starts mid-stream), the pictures before an intra-refresh stream (no
    # IDR frames) has refreshed once. Players skip them; so does the output's picture, which starts
    # where the source's first decodable picture is shown (its sound is kept whole).
    if first_frame.pts is not None and ts[0] < first_frame.pts <= ts[-1]:
        ts = ts[ts >= first_frame.pts]
    if len(np.unique(ts)) != len(ts):
        raise BadVideo("duplicate frame timestamps in the video stream; frame order is ambiguous")
    deltas = np.diff(ts)
    typical = int(np.median(deltas)) if len(deltas) else 0
    end_pts = _end_pts(stream, int(ts[-1]), packet_end, typical)
    time_base = Fraction(stream.time_base)
    duration = (end_pts - int(ts[0])) * time_base
    # Timestamps rounded to the container's clock (Matroska counts milliseconds) jitter by one tick
    # at a constant rate, so only a spread beyond that (and beyond 1% of a frame) means VFR.
    spread = int(deltas.max() - deltas.min()) if len(deltas) else 0
    vfr = spread > max(1, typical // 100)
    # The demuxer's average rate, unless the timestamps contradict it (DV written by some tools states its
    # clock, 60000, as its rate): a rate off by more than 5% from frames / duration is not the video's.
    measured = Fraction(len(ts)) / duration
    fps = Fraction(stream.average_rate) if stream.average_rate else measured
    if abs(fps - measured) > measured / 20:
        fps = measured
    info = VideoInfo(
        container=container.format.name,
        codec=_codec_name(stream),
        width=coded["width"],
        height=coded["height"],
        rotation=display_rotation(stream, first_frame),
        fps=fps,
        time_base=time_base,
        frame_count=len(ts),
        start_pts=int(ts[0]),
        end_pts=end_pts,
        duration=duration,
        variable_frame_rate=vfr,
        pix_fmt=coded["pix_fmt"],
        colorspace=int(first_frame.colorspace),
        color_range=int(first_frame.color_range),
        color_primaries=int(first_frame.color_primaries),
        color_trc=int(first_frame.color_trc),
        video_index=stream.index,
        audio=tuple(_stream_info(s, "audio") for s in container.streams.audio),
        subtitles=tuple(_stream_info(s, "subtitle") for s in container.streams.subtitles),
        attachments=tuple(_stream_info(s, "attachment") for s in container.streams.attachments),
        others=_other_streams(container, stream),
        sar=sample_aspect_ratio(stream),
        captions=coded["captions"],
        timecode=_timecode(container, stream),
        **interlacing(container, stream, first_frame, coded["field_order"], _codec_name(stream)),
    )
    if info.width <= 0 or info.height <= 0:
        raise BadVideo(f"video stream has no picture size ({info.width}x{info.height})")
    return info, ts


def _end_pts(stream: av.video.stream.VideoStream, last_pts: int, packet_end: int | None, typical: int) -> int:
    """Where the last frame stops being shown. MP4 states it per track (edit lists included);
    elsewhere packet durations say it, and failing those the last frame lasts a typical frame."""
    if stream.duration and stream.start_time is not None and stream.start_time + stream.duration > last_pts:
        return int(stream.start_time + stream.duration)
    if packet_end is not None and packet_end > last_pts:
        return int(packet_end)
    return last_pts + (typical or 1)


def _try_decode(context: av.codec.context.CodecContext, packet: av.Packet | None) -> av.VideoFrame | None:
    """The first frame `packet` yields, or None; a damaged packet here is not yet a verdict."""
    try:
        frames = context.decode(packet)
    except av.error.EOFError:
        return None
    except av.error.FFmpegError as e:
        log.debug("packet failed to decode while probing: %s", e)
        return None
    return frames[0] if frames else None


def display_rotation(stream: av.video.stream.VideoStream, frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation, snapped to a quarter turn.

    FFmpeg >= 7 exports the container's display matrix as side data on every decoded frame, which
    PyAV reads as `frame.rotation` (counter-clockwise). Older muxers left a `rotate` tag instead,
    which counts clockwise. Flips in the matrix are not handled (rare outside phone selfies).
    """
    degrees = float(frame.rotation or 0)
    if not degrees and "rotate" in stream.metadata:
        try:
            degrees = -float(stream.metadata["rotate"])
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90.0)) % 4 * 90


def sample_aspect_ratio(stream: av.video.stream.VideoStream) -> Fraction:
    """The pixels' aspect ratio the container (or else the bitstream) states; 1 when neither does
    (FFmpeg's 0/1, "unknown", is taken as square, as players do)."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar:
            return Fraction(sar)
    return Fraction(1)


def _timecode(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> str | None:
    """The first frame's timecode: a tag on the video stream (MOV/MP4 with a tmcd track, MXF), on the
    container (DV, MXF), or on a timecode data track."""
    candidates = [stream.metadata, container.metadata, *(s.metadata for s in container.streams.data)]
    return next((tags["timecode"] for tags in candidates if tags.get("timecode")), None)


def _other_streams(container: av.container.InputContainer, restored: av.video.stream.VideoStream
                   ) -> tuple[StreamInfo, ...]:
    """The streams that are neither the restored video nor audio, subtitles or attachments: video
    streams past the first, cover art, data tracks (a timecode track, KLV, SCTE-35)."""
    others = []
    for s in container.streams:
        if s.type == "video" and s.index != restored.index:
            cover = bool(s.disposition & av.stream.Disposition.attached_pic)
            others.append(_stream_info(s, "cover" if cover else "video"))
        elif s.type == "data":
            data = _stream_info(s, "data")  # a timecode track has no codec PyAV can name: say what it is
            others.append(dataclasses.replace(data, codec="timecode") if s.metadata.get("timecode") else data)
    return tuple(others)


def _stream_info(stream: av.stream.Stream, kind: str) -> StreamInfo:
    codec = stream.mimetype or "" if kind == "attachment" else _codec_name(stream)
    return StreamInfo(index=stream.index, kind=kind, codec=codec, language=stream.language,
                      title=stream.metadata.get("title"), disposition=int(stream.disposition))


def _codec_name(stream: av.stream.Stream) -> str:
    """The codec's canonical FFmpeg name ("subrip", "mp3"), not the decoder's ("srt", "mp3float");
    "unknown" where FFmpeg has no decoder (teletext, KLV, a timecode track): PyAV then shows none."""
    context = stream.codec_context
    return context.codec.canonical_name if context is not None and context.codec is not None else "unknown"


def _file_size(f: BinaryIO) -> int:
    pos = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return size


def _ffmpeg_text(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)
