"""The output's clock: every stream's timestamps move by the same amount, so that the earliest stream
of the source (picture, sound or subtitles) starts at 0 and each keeps its lead or lag over the others;
and the order in which packets of the moved streams are interleaved."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction

import av

from pipelines.media.video_info import VideoInfo


def moved(packets: Iterator[av.Packet], origin: Fraction) -> Iterator[av.Packet]:
    """`packets` on the output's clock, which starts at `origin` seconds of the source's."""
    for packet in packets:
        yield move(packet, ticks(origin, packet.time_base))


def move(packet: av.Packet, ticks: int) -> av.Packet:
    """`packet` with its timestamps `ticks` earlier (those it has)."""
    if packet.pts is not None:
        packet.pts -= ticks
    if packet.dts is not None:
        packet.dts -= ticks
    return packet


def ticks(origin: Fraction, time_base: Fraction) -> int:
    """`origin` seconds in whole ticks of `time_base`, rounded down: no moved timestamp goes below 0."""
    return math.floor(origin / Fraction(time_base))


def earliest_start(src: av.container.InputContainer, info: VideoInfo, kept: dict[int, av.stream.Stream]) -> Fraction:
    """The source time, in seconds, that becomes the output's 0: the earliest start of the picture and
    of the streams kept beside it (their own `start_time`s, as the demuxer unwrapped them)."""
    starts = [info.start_pts * info.time_base]
    for index in kept:
        stream = src.streams[index]
        if stream.start_time is not None and not stream.disposition & av.stream.Disposition.attached_pic:
            starts.append(stream.start_time * Fraction(stream.time_base))
    return min(starts)


def moved_chapter(chapter: dict, origin: Fraction) -> dict:
    """A source chapter on the output's clock (see `earliest_start`)."""
    shift = ticks(origin, chapter["time_base"])
    return chapter | {"start": max(0, chapter["start"] - shift), "end": max(0, chapter["end"] - shift)}


def within(packets: Iterator[av.Packet], length: Fraction) -> Iterator[av.Packet]:
    """The packets (on the output's clock) that start in its first `length` seconds; those without a
    pts (cover art) too."""
    for packet in packets:
        if packet.pts is None or 0 <= packet.pts * Fraction(packet.time_base) < length:
            yield packet


def due(packet: av.Packet) -> Fraction:
    """When a packet is due in the interleaving; one without timestamps (cover art) goes first."""
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(-1) if ts is None else ts * Fraction(packet.time_base)
