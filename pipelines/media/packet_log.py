"""What one demux pass learns of a source's video stream (`PacketLog`): every shown packet's pts, the
latest end a packet claims, the first decoded frame and a damaged container; the probe and the scene
detection's single pass both fill one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from pipelines.media.describe import describe_video
from pipelines.media.input_container import decoder, ffmpeg_text
from pipelines.media.video_info import BadVideo, VideoInfo

log = logging.getLogger(__name__)


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
        return describe_video(container, self.stream, self.pts, self.packet_end, self.first_frame, self.coded)

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
            self.damage = f"damaged container after {len(self.pts)} video packets ({ffmpeg_text(e)})"
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
