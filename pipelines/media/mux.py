"""Write a video with a source's timing: encode frames at the source's own timestamps, keep its audio,
subtitles, chapters and attachments in a container that can carry them (audio it cannot carry becomes
FLAC), and publish the file atomically."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from pipelines.media.probe import open_container
from pipelines.media.video_info import BadVideo, VideoInfo, has_alpha
from pipelines.storage import Source, atomic_output, open_input

log = logging.getLogger(__name__)

# Codecs each output container carries, by FFmpeg's canonical codec name. Deliberately conservative:
# MP4 plays everywhere, but only with these; Matroska takes nearly anything else an archive holds.
MP4_AUDIO = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "alac", "opus", "flac"})
MP4_SUBTITLES = frozenset({"mov_text"})
MKV_AUDIO = MP4_AUDIO | frozenset({"vorbis", "dts", "truehd", "wavpack", "tta", "pcm_s16le", "pcm_s24le",
                                   "pcm_s32le", "pcm_f32le", "pcm_u8", "pcm_s16be", "pcm_alaw", "pcm_mulaw"})
MKV_SUBTITLES = frozenset({"subrip", "ass", "webvtt", "text", "dvd_subtitle", "hdmv_pgs_subtitle",
                           "dvb_subtitle"})
LOSSLESS_AUDIO = "flac"  # what an audio track the output container cannot carry becomes
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".mkv": "matroska"}
# PyAV's reformatter knows these colour matrices; SMPTE 170M is BT.601 under another name.
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
# Stream tags the muxer writes itself (Matroska's statistics): copying them would state old values.
_DERIVED_TAGS = ("DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS", "_STATISTICS_", "ENCODER", "HANDLER_NAME",
                 "VENDOR_ID")


def choose_container(info: VideoInfo) -> Literal["mp4", "mkv"]:
    """"mp4" when every audio and subtitle stream of the source fits in MP4 unchanged and there are no
    attachments, else "mkv". Never fails: audio that the chosen container cannot carry is transcoded
    losslessly to FLAC (`transcoded_audio`); only MOV text subtitles need MP4 (Matroska has no
    mov_text), so they keep the output in MP4, with FLAC for the audio MP4 cannot carry.

    Where we differ from `ffmpeg -c copy`: that fails on such a source; an archive must not lose
    its picture (or its sound) over a container's codec list.
    """
    if has_alpha(info):
        return "mkv"  # FFV1 with its alpha plane (see write_video)
    audio = {s.codec for s in info.audio}
    subtitles = {s.codec for s in info.subtitles}
    if subtitles <= MP4_SUBTITLES and (audio <= MP4_AUDIO and not info.attachments or not subtitles <= MKV_SUBTITLES):
        return "mp4"
    return "mkv"


def transcoded_audio(info: VideoInfo, container: Literal["mp4", "mkv"]) -> frozenset[int]:
    """Source indices of the audio streams that go into `container` as FLAC (every other stream is
    copied unchanged). FLAC keeps every sample the decoder produces, at 24 bits where the source has
    more than 16, so the one decode of a lossy source (WMA, Nellymoser, ADPCM) is the only change."""
    carried = MP4_AUDIO if container == "mp4" else MKV_AUDIO
    return frozenset(s.index for s in info.audio if s.codec not in carried)


def write_video(
    source: Source,
    frames: Iterator[np.ndarray],
    output_url: str | os.PathLike,
    info: VideoInfo,
    timestamps: np.ndarray,
    *,
    crf: int = 16,
    preset: str = "medium",
    fence: Callable[[], None] | None = None,
) -> None:
    """Write `frames` ((H, W, 3) uint8, or uint16 from a deep-colour source, one per source frame) to
    `output_url` (".mp4" or ".mkv": see `choose_container`) with every audio and subtitle stream of
    `source`, its chapters and (in Matroska) its attachments.

    Frame i is shown at the source's pts of frame i (`timestamps`) in the source's time_base, so
    variable frame rates and the duration carry over (Matroska rounds them to its millisecond clock).
    The video is H.264 yuv420p (yuv420p10le for uint16 frames), or FFV1 yuva444p in Matroska for
    (H, W, 4) RGBA frames (a source with alpha), tagged with the source's colour primaries, transfer
    and matrix; an odd size is padded by one row or column repeating the edge (no
    pixel is dropped). Frames are upright, so no rotation is written. Audio and subtitles are copied
    packet for packet with their languages, titles and dispositions; audio the container cannot carry
    is transcoded to FLAC (`transcoded_audio`). Nothing appears at `output_url` unless the whole file
    was written (and `fence`, called just before, raised nothing: see `storage.atomic_output`).
    """
    fmt = _FORMATS.get(os.path.splitext(os.fspath(output_url))[1].lower())
    if fmt is None:
        raise ValueError(f"output {output_url!r} must end in one of {sorted(_FORMATS)}")
    if fmt == "mp4" and choose_container(info) == "mkv":
        raise ValueError(f"the source's streams ({[s.codec for s in info.audio + info.subtitles + info.attachments]}) "
                         f"do not fit in MP4; name the output by choose_container(info), here '.mkv'")
    flac = transcoded_audio(info, "mp4" if fmt == "mp4" else "mkv")
    # MP4 rounds its edit list to the movie clock (1 ms by default): use the video's own clock.
    options = {}
    if fmt == "mp4" and info.time_base.numerator == 1:
        options["movie_timescale"] = str(info.time_base.denominator)

    with atomic_output(output_url, fence) as tmp, open_input(source) as f:
        src = open_container(f)
        try:
            with av.open(tmp, "w", format=fmt, options=options) as out:
                first = next(frames)
                height, width = first.shape[0] + first.shape[0] % 2, first.shape[1] + first.shape[1] % 2
                video = _add_video_stream(out, info, width, height, crf, preset, deep=first.dtype == np.uint16,
                                          alpha=first.shape[-1] == 4)
                _keep_tags(src.streams[info.video_index], video)
                kept = {s.index: _add_kept_stream(out, src.streams[s.index], s.index in flac)
                        for s in info.audio + info.subtitles}
                if fmt == "matroska":
                    for a in info.attachments:
                        attachment = src.streams[a.index]
                        out.add_attachment(attachment.name, attachment.mimetype, bytes(attachment.data))
                out.set_chapters(src.chapters())
                encoded = _encode(video, itertools.chain([first], frames), timestamps, info, fmt)
                # Interleave by time, so the muxer never has to buffer a whole audio track.
                for packet in heapq.merge(encoded, _kept_packets(src, kept, flac), key=_seconds):
                    out.mux(packet)
        finally:
            src.close()


def _add_kept_stream(out: av.container.OutputContainer, template: av.stream.Stream, to_flac: bool
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
    _keep_tags(template, stream)
    return stream


def _keep_tags(template: av.stream.Stream, stream: av.stream.Stream) -> None:
    """Language, title and the like, and the disposition (default, commentary, forced, ...)."""
    for key, value in template.metadata.items():
        if not key.upper().startswith(_DERIVED_TAGS):
            stream.metadata[key] = value
    stream.disposition = template.disposition


def _encode(video: av.video.stream.VideoStream, frames: Iterator[np.ndarray], timestamps: np.ndarray,
            info: VideoInfo, fmt: str) -> Iterator[av.Packet]:
    """Encode frame i at the source's pts of frame i; packets carry the source frame durations."""
    time_base = info.time_base  # kept apart: the muxer rewrites video.time_base at the header
    ends = np.append(timestamps[1:], info.end_pts)
    durations = {int(p): int(e - p) for p, e in zip(timestamps, ends)}

    def packets() -> Iterator[av.Packet]:
        count = 0
        for pts, rgb in zip(timestamps.tolist(), frames):
            frame = _yuv_frame(_pad_even(rgb, video.height, video.width), info, video.pix_fmt)
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
    if held is not None and fmt == "mp4":
        # MP4 stores sample durations as dts steps and takes only the last one from a packet.
        # With B-frames the dts run ahead of the pts, so the last packet's duration is what makes
        # the track end exactly where the source's last frame ends.
        held.duration = (info.end_pts - int(timestamps[0])) - (held.dts - first_dts)
    if held is not None:
        yield held


def _add_video_stream(out: av.container.OutputContainer, info: VideoInfo, width: int, height: int,
                      crf: int, preset: str, deep: bool, alpha: bool) -> av.video.stream.VideoStream:
    if alpha:
        # H.264 has no alpha: FFV1 (lossless, 4:4:4 with alpha) in Matroska keeps it; crf does not apply.
        video = out.add_stream("ffv1", rate=info.fps)
        video.pix_fmt = "yuva444p10le" if deep else "yuva444p"
        video.options = {"level": "3", "slices": "4"}
    else:
        video = out.add_stream("libx264", rate=info.fps)  # rate only guides x264's rate control
        # A source of more than 8 bits is written 10-bit (x264's High 10 profile), 4:2:0 like the rest.
        video.pix_fmt = "yuv420p10le" if deep else "yuv420p"
        video.options = {"crf": str(crf), "preset": preset}
    video.width, video.height = width, height
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


def _yuv_frame(rgb: np.ndarray, info: VideoInfo, pix_fmt: str) -> av.VideoFrame:
    """RGB or RGBA (uint8, or uint16 for deep colour) -> `pix_fmt` with the source's matrix and range:
    decoding used them to make the RGB."""
    layout = ("rgba64le", "rgba") if rgb.shape[-1] == 4 else ("rgb48le", "rgb24")
    frame = av.VideoFrame.from_ndarray(rgb, format=layout[0] if rgb.dtype == np.uint16 else layout[1])
    return frame.reformat(format=pix_fmt, dst_colorspace=_MATRICES.get(info.colorspace),
                          dst_color_range=info.color_range or None)


def _pad_even(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    pad = ((0, height - rgb.shape[0]), (0, width - rgb.shape[1]), (0, 0))
    if min(pad[0][1], pad[1][1]) < 0 or max(pad[0][1], pad[1][1]) > 1:
        raise BadVideo(f"resolution changes mid-stream (restored frames of {rgb.shape[1]}x{rgb.shape[0]} after "
                       f"{width}x{height}): not restored; split the file where the size changes")
    return np.pad(rgb, pad, mode="edge")


def _kept_packets(src: av.container.InputContainer, kept: dict[int, av.stream.Stream],
                  flac: frozenset[int]) -> Iterator[av.Packet]:
    """The source's audio and subtitle packets, re-addressed to their output streams unchanged, or
    (streams in `flac`) decoded and encoded again as FLAC."""
    if not kept:
        return
    ends: dict[int, int | None] = {}  # per FLAC stream, the pts where its last decoded frame ended
    for packet in src.demux(*[src.streams[i] for i in kept]):
        index = packet.stream.index  # the flush packet at the end has no stream_index of its own
        stream = kept[index]
        if index in flac:
            yield from _flac_packets(packet, stream, ends)
        elif packet.dts is not None or packet.pts is not None:  # not the empty flush packet at the end
            packet.stream = stream  # keeps its time_base; mux rescales
            yield packet


def _flac_packets(packet: av.Packet, stream: av.audio.stream.AudioStream, ends: dict[int, int | None]
                  ) -> Iterator[av.Packet]:
    """Decode one source packet (the empty one at the end flushes) and encode its samples as FLAC.

    PyAV's encoder re-chunks the samples to FLAC's frame size and converts the sample format; the
    frames keep their pts, so the track starts where the source's did. A packet the decoder rejects
    is skipped with a warning (a gap of one packet): damaged sound never fails the picture. `ends`:
    where each stream's last frame ended (`_stamp`), kept from call to call.
    """
    flush = packet.dts is None and packet.pts is None
    try:
        frames = packet.decode()
    except av.error.FFmpegError as e:
        log.warning("audio packet at pts %s of stream %d does not decode, skipped: %s", packet.pts,
                    packet.stream_index, e)
        frames = []
    for frame in frames:
        ends[packet.stream.index] = _stamp(frame, ends.get(packet.stream.index))
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


def _seconds(packet: av.Packet) -> Fraction:
    ts = packet.dts if packet.dts is not None else packet.pts
    return ts * Fraction(packet.time_base)
