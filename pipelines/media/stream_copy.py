"""The source streams kept beside the restored picture: audio, subtitles, further video streams and
cover art copied packet for packet onto the output's clock, with their tags and dispositions; audio the
output container cannot carry decoded and encoded again as FLAC."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

import av

from pipelines.media.clock import move, ticks

log = logging.getLogger(__name__)

LOSSLESS_AUDIO = "flac"  # what an audio track the output container cannot carry becomes
# Stream tags the muxer writes itself (Matroska's statistics): copying them would state old values.
_DERIVED_TAGS = ("DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS", "_STATISTICS_", "ENCODER", "HANDLER_NAME",
                 "VENDOR_ID")


def add_kept_stream(out: av.container.OutputContainer, template: av.stream.Stream, to_flac: bool
                    ) -> av.stream.Stream:
    """The output stream for a source audio or subtitle stream: a copy of its codec parameters, or
    a FLAC encoder at its sample rate and channel layout; tags and disposition kept either way."""
    if to_flac:
        source = template.codec_context
        stream = out.add_stream(LOSSLESS_AUDIO, rate=source.sample_rate)
        stream.layout = source.layout
        # FLAC holds 16 or 24 bits here; anything wider than 16 goes at 24: exact for 24-bit PCM,
        # and far finer than what the float output of a WMA, Nellymoser or ADPCM decoder carries.
        # 32-bit integer or float PCM (rare in archives) is rounded to 24 bits.
        stream.format = "s16" if source.format.bytes <= 2 and not source.format.name.startswith("flt") else "s32"
    else:
        stream = out.add_stream_from_template(template)
    keep_tags(template, stream)
    return stream


def keep_tags(template: av.stream.Stream, stream: av.stream.Stream) -> None:
    """Language, title and the like, and the disposition (default, commentary, forced, ...)."""
    for key, value in template.metadata.items():
        if not key.upper().startswith(_DERIVED_TAGS):
            stream.metadata[key] = value
    stream.disposition = template.disposition


def kept_packets(src: av.container.InputContainer, kept: dict[int, av.stream.Stream],
                 flac: frozenset[int], origin: Fraction) -> Iterator[av.Packet]:
    """The source's kept packets, re-addressed to their output streams unchanged but for the clock
    moved by `origin` seconds, or (streams in `flac`) decoded and encoded again as FLAC."""
    if not kept:
        return
    shifts = {i: ticks(origin, src.streams[i].time_base) for i in kept}
    ends: dict[int, int | None] = {}  # per FLAC stream, the pts where its last decoded frame ended
    for packet in src.demux(*[src.streams[i] for i in kept]):
        index = packet.stream.index  # the flush packet at the end has no stream_index of its own
        stream = kept[index]
        if index in flac:
            yield from _flac_packets(packet, stream, shifts[index], ends)
        elif packet.size:  # not the empty flush packet at the end (cover art has no timestamps at all)
            move(packet, shifts[index])
            packet.stream = stream  # keeps its time_base; mux rescales
            yield packet


def _flac_packets(packet: av.Packet, stream: av.audio.stream.AudioStream, shift: int,
                  ends: dict[int, int | None]) -> Iterator[av.Packet]:
    """Decode one source packet (the empty one at the end flushes) and encode its samples as FLAC.

    PyAV's encoder re-chunks the samples to FLAC's frame size and converts the sample format; the
    frames keep their pts less `shift` (the output's clock), so the track starts where the source's
    did. A packet the decoder rejects is skipped with a warning (a gap of one packet): damaged sound
    never fails the picture. `ends`: where each stream's last frame ended on the source's clock
    (`_stamp`), kept from call to call.
    """
    flush = not packet.size
    try:
        frames = packet.decode()
    except av.error.FFmpegError as e:
        log.warning("audio packet at pts %s of stream %d does not decode, skipped: %s", packet.pts,
                    packet.stream_index, e)
        frames = []
    for frame in frames:
        ends[packet.stream.index] = _stamp(frame, ends.get(packet.stream.index))
        if frame.pts is not None:
            frame.pts -= shift
        yield from stream.encode(frame)
    if flush:
        yield from stream.encode(None)


def _stamp(frame: av.AudioFrame, expected: int | None) -> int | None:
    """Give `frame` the pts where the frame before it ended (`expected`) if the decoder left it none,
    as ffmpeg's command line does; returns where `frame` ends. The frames a decoder gives up when it
    is flushed carry no pts (WMA holds back one): FLAC would encode them into packets without
    timestamps, which the interleaving cannot place and the muxer refuses."""
    if frame.pts is None:
        frame.pts = expected
    if frame.pts is None:
        return None
    return frame.pts + round(Fraction(frame.samples, frame.sample_rate) / frame.time_base)
