"""Describe a source video from a finished demux pass (media.packet_log): the `VideoInfo` of its
timing (presentation-order pts, end, frame rate, VFR), picture, colours, rotation, aspect ratio,
timecode, interlacing and every other stream."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import av
import numpy as np

from pipelines.media.field_order import interlacing
from pipelines.media.video_info import BadVideo, StreamInfo, VideoInfo


def describe_video(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: list[int],
                   packet_end: int | None, first_frame: av.VideoFrame | None, coded: dict[str, Any]
                   ) -> tuple[VideoInfo, np.ndarray]:
    """The VideoInfo and the presentation-order pts of `stream`, from a pass that logged the shown
    packets' `pts`, the latest end a packet claimed and the first decoded frame (`coded`: the decoder's
    picture format, size and field order after it)."""
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
