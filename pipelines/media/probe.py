"""Probe a source video with PyAV: streams, timing, an exact frame count, rotation, and a clear
`BadVideo` reason for inputs that cannot be restored (the first thing the scenes stage runs)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from collections.abc import Iterator
from typing import Any, BinaryIO

import av
import av.filter
import numpy as np

from pipelines.media.diagnose import diagnose
from pipelines.storage import Source, open_input

log = logging.getLogger(__name__)

# The demuxers PyAV may pick for a source: real video containers only (FFmpeg's names). FFmpeg would
# otherwise pick the demuxer by content, whatever the extension: a text file `x.mp4` holding
# `ffconcat version 1.0` / `file other.mp4` opens as `concat` and reads its neighbours (an HLS or
# other playlist likewise), and raw elementary streams (h264, hevc, m2v) carry no timestamps.
VIDEO_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpeg", "mpegts", "asf", "flv", "dv", "mxf",
                  "gxf", "ogg", "rm", "nut", "ivf", "wtv")
# FFmpeg's AVFieldOrder by the field shown first: TT and BT show the top field first (BT codes the
# bottom one first), BB and TB the bottom one; 0 is "unknown".
_FIELD_ORDERS = {1: "progressive", 2: "tff", 5: "tff", 3: "bff", 4: "bff"}
IDET_FRAMES = 24  # frames idet looks at, for the field order where the codec states none, and for telecine
TELECINE_REPEATS = 0.2  # share of frames with a repeated field above which an interlaced source is telecine
_ALPHA_FORMATS = re.compile(r"^(yuva|gbrap|ya\d|rgba|bgra|argb|abgr)")  # FFmpeg pixel formats with alpha
_HDR_TRANSFERS = {16: "PQ (SMPTE ST 2084)", 18: "HLG (ARIB STD-B67)"}  # FFmpeg's AVColorTransferCharacteristic
_PLAYLISTS = {b"ffconcat": "an FFmpeg concat playlist", b"#EXTM3U": "an HLS/M3U playlist"}


class BadVideo(ValueError):
    """The input cannot be restored; `reason` is the one-line text that goes into the ledger."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamInfo:
    """An audio, subtitle or attachment stream that the assembler keeps in the output (copied
    unchanged, or audio transcoded losslessly to FLAC where the output container cannot carry it)."""

    index: int  # stream index in the source container
    kind: str  # "audio" | "subtitle" | "attachment"
    codec: str  # FFmpeg codec name, e.g. "aac", "subrip", "mov_text"; an attachment's MIME type
    language: str | None
    title: str | None = None
    disposition: int = 0  # FFmpeg's AV_DISPOSITION_* flags (default, comment, forced, ...)


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a source, all from one demux pass."""

    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2" or "matroska,webm"
    codec: str  # video codec, e.g. "h264"
    width: int  # coded size, before the display rotation is applied
    height: int
    rotation: int  # degrees counter-clockwise that turn a decoded frame upright: 0, 90, 180, 270
    fps: Fraction  # average frame rate
    time_base: Fraction  # of the video stream; frame pts are in these units
    frame_count: int  # counted from demuxed packets, not read from the header
    start_pts: int  # pts of the first frame (presentation order)
    end_pts: int  # pts at which the last frame stops being shown
    duration: Fraction  # seconds, (end_pts - start_pts) * time_base
    variable_frame_rate: bool
    pix_fmt: str | None
    # FFmpeg's colour enums as the first frame carries them (2 = unspecified for all but range,
    # 0 = unspecified range); the assembler encodes back with the same matrix and tags.
    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int
    video_index: int  # stream index of the video stream in the source container
    audio: tuple[StreamInfo, ...]
    subtitles: tuple[StreamInfo, ...]
    attachments: tuple[StreamInfo, ...] = ()  # fonts of styled subtitles, cover images (Matroska)
    # "progressive", or the field shown first of an interlaced source: "tff" | "bff" (see _field_order)
    field_order: str = "progressive"
    telecine: bool = False  # interlaced by 3:2 pulldown of progressive film (idet's repeated fields)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after rotation: the size of the frames `read_frames` returns."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


def check_restorable(info: VideoInfo) -> None:
    """Raise `BadVideo` for a source the pipeline would damage without saying so; call before any GPU
    time is spent. What it refuses, and why:

    - alpha on an interlaced source: the alpha plane is carried past the model progressive only;
    - HDR (PQ or HLG transfer): the model was trained on SDR frames and sees 8-bit RGB; restoring
      would clip highlights and still tag the result HDR (or silently tag it SDR);
    - interlaced with rotation metadata: fields are rows of the coded picture, which the decoded,
      turned-upright frames no longer have.
    """
    if has_alpha(info) and info.field_order != "progressive":
        raise BadVideo(f"interlaced video with an alpha channel ({info.pix_fmt}): not supported")
    if info.color_trc in _HDR_TRANSFERS:
        raise BadVideo(f"HDR video ({_HDR_TRANSFERS[info.color_trc]} transfer): the model restores SDR "
                       f"pictures only; an HDR source would lose its highlights")
    if info.field_order != "progressive" and info.rotation:
        raise BadVideo(f"interlaced ({info.field_order}) and rotated {info.rotation} degrees by metadata: "
                       f"deinterlacing a rotated picture is not supported")


def has_alpha(info: VideoInfo) -> bool:
    """Whether the source's pixel format has an alpha plane (ProRes 4444, FFV1, PNG, QuickTime Animation)."""
    return bool(info.pix_fmt and _ALPHA_FORMATS.match(info.pix_fmt))


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream; cover art (an attached picture) is a video stream too in FFmpeg."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise BadVideo("no video stream (audio-only or data-only file)")


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
    """The video stream, once its header says its frames are within `max_pixels` (width x height)."""
    stream = video_stream(container)
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
                    self._first(_try_decode(self.stream, packet))
        if self.first_frame is None:
            self._first(_try_decode(self.stream, None))  # flush: a one-frame clip may sit in the delay

    def decode(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """Demux on from where the last pass stopped and decode every packet, as `container.decode`
        does: a packet that fails to decode raises FFmpegError (it is logged already; a new call goes
        on with the next packet)."""
        for packet in self._packets(container):
            frames = self.stream.decode(packet)
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
            context = self.stream.codec_context
            self.first_frame = frame
            self.coded = dict(width=context.width, height=context.height, pix_fmt=context.pix_fmt,
                              field_order=context.field_order)

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
    fps = Fraction(stream.average_rate) if stream.average_rate else Fraction(len(ts)) / duration
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
        **_interlacing(container, stream, first_frame, coded["field_order"]),
    )
    if info.width <= 0 or info.height <= 0:
        raise BadVideo(f"video stream has no picture size ({info.width}x{info.height})")
    return info, ts


def _interlacing(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 first_frame: av.VideoFrame, coded_order: int) -> dict[str, Any]:
    """{"field_order": ..., "telecine": ...} (VideoInfo's fields) for the video stream, whose decoder
    stated `coded_order` (FFmpeg's AVFieldOrder) at its first frame."""
    stated = _FIELD_ORDERS.get(coded_order)
    if stated == "progressive":
        return {"field_order": stated, "telecine": False}
    votes = _idet_votes(container, stream)
    order = stated or _field_order(votes, stream, first_frame)
    if order == "progressive":
        return {"field_order": order, "telecine": False}
    # 3:2 pulldown repeats a field in 2 frames of every 5 (idet counts 0.4 of them); interlaced video
    # repeats none. Half that rate is the line.
    repeated = votes["repeated_top"] + votes["repeated_bottom"]
    telecine = repeated > 0 and repeated >= TELECINE_REPEATS * (repeated + votes["repeated_neither"])
    return {"field_order": order, "telecine": telecine}


def _field_order(votes: dict[str, float], stream: av.video.stream.VideoStream, first_frame: av.VideoFrame) -> str:
    """"progressive", "tff" or "bff" where the codec states no order (DV in AVI, MPEG-4 Part 2, MJPEG):
    FFmpeg's idet on the first frames (the codecs that state one: MPEG-2, H.264, HEVC with SEI,
    ProRes, are taken at their word, as FFmpeg does). A frame flagged interlaced whose fields idet
    finds alike (no motion yet) keeps the flag, with the order DV uses (bottom first) or else top first.
    """
    interlaced = votes["tff"] + votes["bff"]
    if not first_frame.interlaced_frame and interlaced <= votes["progressive"]:
        return "progressive"
    if not interlaced:
        return "bff" if _codec_name(stream) == "dvvideo" else "tff"
    return "tff" if votes["tff"] >= votes["bff"] else "bff"


def _idet_votes(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> dict[str, float]:
    """FFmpeg's idet over the first `IDET_FRAMES` frames: frames it calls tff, bff and progressive, and
    frames with a repeated top, bottom or neither field."""
    votes = {"tff": 0.0, "bff": 0.0, "progressive": 0.0, "repeated_top": 0.0, "repeated_bottom": 0.0,
             "repeated_neither": 0.0}
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
        graph = av.filter.Graph()
        graph.link_nodes(graph.add_buffer(template=stream), graph.add("idet"), graph.add("buffersink")).configure()
        last = None
        for i, frame in enumerate(container.decode(stream)):
            if i == IDET_FRAMES:
                break
            graph.push(frame)
            with contextlib.suppress(av.error.BlockingIOError):
                last = graph.pull()
    except av.error.FFmpegError as e:  # an undecodable frame early on: no verdict from idet
        log.debug("idet could not run: %s", e)
        return votes
    if last is not None:
        for kind in votes:
            key = f"lavfi.idet.repeated.{kind[9:]}" if kind.startswith("repeated_") else f"lavfi.idet.multiple.{kind}"
            votes[kind] = float(last.metadata.get(key, 0))
    return votes


def _end_pts(stream: av.video.stream.VideoStream, last_pts: int, packet_end: int | None, typical: int) -> int:
    """Where the last frame stops being shown. MP4 states it per track (edit lists included);
    elsewhere packet durations say it, and failing those the last frame lasts a typical frame."""
    if stream.duration and stream.start_time is not None and stream.start_time + stream.duration > last_pts:
        return int(stream.start_time + stream.duration)
    if packet_end is not None and packet_end > last_pts:
        return int(packet_end)
    return last_pts + (typical or 1)


def _try_decode(stream: av.video.stream.VideoStream, packet: av.Packet | None) -> av.VideoFrame | None:
    """The first frame `packet` yields, or None; a damaged packet here is not yet a verdict."""
    try:
        frames = stream.decode(packet)
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


def _stream_info(stream: av.stream.Stream, kind: str) -> StreamInfo:
    codec = stream.mimetype or "" if kind == "attachment" else _codec_name(stream)
    return StreamInfo(index=stream.index, kind=kind, codec=codec, language=stream.language,
                      title=stream.metadata.get("title"), disposition=int(stream.disposition))


def _codec_name(stream: av.stream.Stream) -> str:
    """The codec's canonical FFmpeg name ("subrip", "mp3"), not the decoder's ("srt", "mp3float")."""
    context = stream.codec_context
    return context.codec.canonical_name if context is not None and context.codec is not None else "unknown"


def _file_size(f: BinaryIO) -> int:
    pos = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return size


def _ffmpeg_text(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)
