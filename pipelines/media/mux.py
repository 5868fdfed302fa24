"""Write a video with a source's timing: encode frames at the source's own timestamps (its clock moved
to start at zero), keep its aspect ratio, audio, subtitles, chapters, attachments, cover art, timecode,
tags and further video streams in a container that can carry them (audio it cannot carry becomes
FLAC; what no container here carries is named in notes), and publish the file atomically."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Literal

import av
import numpy as np

from pipelines.media.captions import Caption, read_captions
from pipelines.media.probe import open_container
from pipelines.media.video_info import BadVideo, StreamInfo, VideoInfo, has_alpha
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
# Further video streams (copied unchanged, not restored) and cover art MP4 carries; Matroska takes any.
MP4_VIDEO = frozenset({"h264", "hevc", "mpeg4", "mpeg2video", "mpeg1video", "mjpeg", "av1", "vp9"})
MP4_COVERS = frozenset({"mjpeg", "png", "bmp"})
LOSSLESS_AUDIO = "flac"  # what an audio track the output container cannot carry becomes
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mp4", ".mkv": "matroska"}
# PyAV's reformatter knows these colour matrices; SMPTE 170M is BT.601 under another name.
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
# Stream tags the muxer writes itself (Matroska's statistics): copying them would state old values.
_DERIVED_TAGS = ("DURATION", "NUMBER_OF_FRAMES", "NUMBER_OF_BYTES", "BPS", "_STATISTICS_", "ENCODER", "HANDLER_NAME",
                 "VENDOR_ID")
# Container tags that describe the old file's format, not its content; the timecode goes on the video
# stream (MP4 writes it as a tmcd track from there).
_FORMAT_TAGS = ("major_brand", "minor_version", "compatible_brands", "encoder", "timecode")
# The container tags FFmpeg's MP4 muxer writes in its plain (iTunes-style) metadata; it drops any other.
_MP4_TAGS = frozenset({"title", "artist", "album_artist", "composer", "album", "date", "comment", "genre", "copyright",
                       "grouping", "lyrics", "description", "synopsis", "show", "episode_id", "network", "keywords",
                       "track", "disc", "location", "creation_time", "encoding_tool", "author", "media_type"})


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
    subtitles = {s.codec for s in info.subtitles} & (MP4_SUBTITLES | MKV_SUBTITLES)  # others go in notes
    videos = {s.codec for s in info.others if s.kind == "video" and s.codec != "unknown"}
    covers = {s.codec for s in info.others if s.kind == "cover"}
    fits = audio <= MP4_AUDIO and not info.attachments and videos <= MP4_VIDEO and covers <= MP4_COVERS
    if subtitles <= MP4_SUBTITLES and (fits or not subtitles <= MKV_SUBTITLES):
        return "mp4"
    return "mkv"


def kept_streams(info: VideoInfo, container: Literal["mp4", "mkv"]) -> tuple[tuple[StreamInfo, ...], tuple[str, ...]]:
    """(the source's streams `container` keeps besides the restored picture, a note for each one it
    does not). Kept: every audio stream; the subtitles it carries; further video streams, copied
    unchanged (only the first video stream is restored: a second program or camera angle is kept as
    it was, and a note says so); cover art. Not kept, each with a note: subtitles and data tracks no
    container here carries (teletext, KLV, SCTE-35: FFmpeg has no muxer support for them in MP4 or
    Matroska), and a timecode track, whose timecode the restored stream carries instead."""
    subtitles = MP4_SUBTITLES if container == "mp4" else MKV_SUBTITLES
    videos = MP4_VIDEO if container == "mp4" else None
    covers = MP4_COVERS if container == "mp4" else None
    kept, notes = list(info.audio), []
    for s in info.subtitles:
        if s.codec in subtitles:
            kept.append(s)
        else:
            notes.append(f"{_named(s)} not carried: {container.upper()} has no place for it")
    for s in info.others:
        allowed = videos if s.kind == "video" else covers if s.kind == "cover" else frozenset()
        if s.codec != "unknown" and (allowed is None or s.codec in allowed):
            kept.append(s)
            if s.kind == "video":
                notes.append(f"{_named(s)} copied unchanged, not restored: only the first video stream is")
        elif s.codec == "timecode":
            notes.append(f"{_named(s)} not copied: the output's timecode ({info.timecode}) comes from it")
        else:
            notes.append(f"{_named(s)} not carried: {container.upper()} has no place for it")
    return tuple(kept), tuple(notes)


def _named(stream: StreamInfo) -> str:
    """"subtitle stream #3 (dvb_teletext, deu)": how notes name a source stream."""
    details = ", ".join(x for x in (stream.codec if stream.codec != "unknown" else "a codec FFmpeg cannot decode",
                                    stream.language, stream.title) if x)
    return f"{stream.kind} stream #{stream.index} ({details})"


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
    square_pixels: bool = False,
    fence: Callable[[], None] | None = None,
) -> tuple[str, ...]:
    """Write `frames` ((H, W, 3) uint8, or uint16 from a deep-colour source, one per source frame) to
    `output_url` (".mp4" or ".mkv": see `choose_container`) with the streams of `source` that
    `kept_streams` keeps, its chapters, container tags, timecode and (in Matroska) attachments; return
    the notes on the streams left out.

    Timing: frame i is shown at the source's pts of frame i (`timestamps`) in the source's time_base,
    so variable frame rates and the duration carry over (Matroska rounds them to its millisecond
    clock). Every stream's clock is moved by the same amount so that the earliest of them (picture,
    sound or subtitles) starts at 0: a broadcast capture whose clock stood at 10 hours, or one cut
    just before its 33-bit clock wraps (negative timestamps), plays from 0 for as long as the source,
    with the audio's lead or lag over the picture kept.

    Picture: H.264 yuv420p (yuv420p10le for uint16 frames), or FFV1 yuva444p in Matroska for (H, W, 4)
    RGBA frames (a source with alpha), tagged with the source's colour primaries, transfer and matrix
    and its sample aspect ratio (anamorphic PAL and NTSC keep their display shape); `square_pixels`
    instead resamples each frame (Lanczos) to square pixels at the same height. An odd size is padded
    by one row or column repeating the edge (no pixel is dropped). Frames are upright, so no rotation
    is written. Audio and subtitles are copied packet for packet with their languages, titles and
    dispositions; audio the container cannot carry is transcoded to FLAC (`transcoded_audio`). Nothing
    appears at `output_url` unless the whole file was written (and `fence`, called just before, raised
    nothing: see `storage.atomic_output`).
    """
    fmt = _FORMATS.get(os.path.splitext(os.fspath(output_url))[1].lower())
    if fmt is None:
        raise ValueError(f"output {output_url!r} must end in one of {sorted(_FORMATS)}")
    if fmt == "mp4" and choose_container(info) == "mkv":
        raise ValueError(f"the source's streams ({[s.codec for s in info.audio + info.subtitles + info.attachments]}) "
                         f"do not fit in MP4; name the output by choose_container(info), here '.mkv'")
    container = "mp4" if fmt == "mp4" else "mkv"
    flac = transcoded_audio(info, container)
    streams, notes = kept_streams(info, container)
    captions = read_captions(source, info.end_pts * info.time_base) if info.captions else []
    with atomic_output(output_url, fence) as tmp, open_input(source) as f:
        src = open_container(f)
        try:
            tags = {k: v for k, v in src.metadata.items() if k.lower() not in _FORMAT_TAGS}
            options, dropped = _mp4_options(info, tags, streams) if fmt == "mp4" else ({}, [])
            if dropped:
                notes += (f"container tags {', '.join(sorted(dropped))} not carried: MP4 keeps tags beyond the "
                          f"standard ones only without cover art",)
            with av.open(tmp, "w", format=fmt, options=options) as out:
                out.metadata.update(tags)
                first = next(frames)
                video = _add_video_stream(out, info, _encoded_size(first, info, square_pixels), crf, preset,
                                          deep=first.dtype == np.uint16, alpha=first.shape[-1] == 4)
                video.codec_context.sample_aspect_ratio = Fraction(1) if square_pixels else info.upright_sar
                _keep_tags(src.streams[info.video_index], video)
                if info.timecode:
                    video.metadata["timecode"] = info.timecode
                kept = {s.index: _add_kept_stream(out, src.streams[s.index], s.index in flac) for s in streams}
                text = _caption_packets(out, captions, fmt) if captions else iter(())
                if fmt == "matroska":
                    for a in info.attachments:
                        attachment = src.streams[a.index]
                        out.add_attachment(attachment.name, attachment.mimetype, bytes(attachment.data))
                origin = _origin(src, info, kept)
                out.set_chapters([_moved_chapter(c, origin) for c in src.chapters()])
                encoded = _encode(video, itertools.chain([first], frames), timestamps, info, fmt,
                                  shift=_ticks(origin, info.time_base))
                # Interleave by time, so the muxer never has to buffer a whole audio track.
                for packet in heapq.merge(encoded, _kept_packets(src, kept, flac, origin), _moved(text, origin),
                                          key=_seconds):
                    out.mux(packet)
        finally:
            src.close()
    return notes


def _mp4_options(info: VideoInfo, tags: dict[str, str], streams: tuple[StreamInfo, ...]
                 ) -> tuple[dict[str, str], list[str]]:
    """(the MP4 muxer's options for this source, the container tags it will drop). Tags beyond the
    standard ones (an archive id, a custom field) need mdta metadata (`use_metadata_tags`), which
    FFmpeg writes without cover art: with cover art the plain metadata is kept, and those tags dropped."""
    options = {}
    if info.time_base.numerator == 1:  # MP4 rounds its edit list to the movie clock (1 ms by default)
        options["movie_timescale"] = str(info.time_base.denominator)
    custom = [k for k in tags if k.lower() not in _MP4_TAGS]
    if not custom:
        return options, []
    if any(s.kind == "cover" for s in streams):
        return options, custom
    return options | {"movflags": "use_metadata_tags"}, []


def _caption_packets(out: av.container.OutputContainer, captions: list[Caption], fmt: str) -> Iterator[av.Packet]:
    """A subtitle track of the closed captions the source's pictures carried (media.captions): MOV
    text in MP4, SubRip in Matroska, on the source's clock in milliseconds (`_moved` shifts it)."""
    stream = out.add_mux_stream("mov_text" if fmt == "mp4" else "subrip")
    stream.metadata["title"] = "Closed captions (EIA-608 CC1, from the source's picture)"
    for caption in captions:
        text = caption.text.encode()
        # A MOV text sample is its UTF-8 length (16-bit, big-endian) and the text; SubRip is the text.
        packet = av.Packet(len(text).to_bytes(2, "big") + text if fmt == "mp4" else text)
        packet.stream, packet.time_base = stream, Fraction(1, 1000)
        packet.pts = packet.dts = math.floor(caption.start * 1000)
        packet.duration = max(1, math.floor(caption.end * 1000) - packet.pts)
        yield packet


def _moved(packets: Iterator[av.Packet], origin: Fraction) -> Iterator[av.Packet]:
    """`packets` on the output's clock, which starts at `origin` seconds of the source's."""
    for packet in packets:
        yield _move(packet, _ticks(origin, packet.time_base))


def _move(packet: av.Packet, ticks: int) -> av.Packet:
    """`packet` with its timestamps `ticks` earlier (those it has)."""
    if packet.pts is not None:
        packet.pts -= ticks
    if packet.dts is not None:
        packet.dts -= ticks
    return packet


def _ticks(origin: Fraction, time_base: Fraction) -> int:
    """`origin` seconds in whole ticks of `time_base`, rounded down: no moved timestamp goes below 0."""
    return math.floor(origin / Fraction(time_base))


def _encoded_size(first: np.ndarray, info: VideoInfo, square_pixels: bool) -> tuple[int, int]:
    """(width, height) of the encoded picture: the frames' size made even, widened or narrowed by the
    sample aspect ratio for square pixels (kept even: 4:2:0 needs it)."""
    height, width = first.shape[0] + first.shape[0] % 2, first.shape[1] + first.shape[1] % 2
    if square_pixels and info.upright_sar != 1:
        width = max(2, 2 * round(width * info.upright_sar / 2))
    return width, height


def _origin(src: av.container.InputContainer, info: VideoInfo, kept: dict[int, av.stream.Stream]) -> Fraction:
    """The source time, in seconds, that becomes the output's 0: the earliest start of the picture and
    of the streams kept beside it (their own `start_time`s, as the demuxer unwrapped them)."""
    starts = [info.start_pts * info.time_base]
    for index in kept:
        stream = src.streams[index]
        if stream.start_time is not None and not stream.disposition & av.stream.Disposition.attached_pic:
            starts.append(stream.start_time * Fraction(stream.time_base))
    return min(starts)


def _moved_chapter(chapter: dict, origin: Fraction) -> dict:
    """A source chapter on the output's clock (see `_origin`)."""
    shift = _ticks(origin, chapter["time_base"])
    return chapter | {"start": max(0, chapter["start"] - shift), "end": max(0, chapter["end"] - shift)}


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
            info: VideoInfo, fmt: str, shift: int) -> Iterator[av.Packet]:
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
    if held is not None and fmt == "mp4":
        # MP4 stores sample durations as dts steps and takes only the last one from a packet.
        # With B-frames the dts run ahead of the pts, so the last packet's duration is what makes
        # the track end exactly where the source's last frame ends.
        held.duration = (info.end_pts - shift - int(timestamps[0])) - (held.dts - first_dts)
    if held is not None:
        yield held


def _add_video_stream(out: av.container.OutputContainer, info: VideoInfo, size: tuple[int, int],
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
    source's matrix and range (decoding used them to make the RGB). A change of size is the resampling
    to square pixels: Lanczos, in the same swscale pass."""
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


def _kept_packets(src: av.container.InputContainer, kept: dict[int, av.stream.Stream],
                  flac: frozenset[int], origin: Fraction) -> Iterator[av.Packet]:
    """The source's kept packets, re-addressed to their output streams unchanged but for the clock
    moved by `origin` seconds, or (streams in `flac`) decoded and encoded again as FLAC."""
    if not kept:
        return
    shifts = {i: _ticks(origin, src.streams[i].time_base) for i in kept}
    ends: dict[int, int | None] = {}  # per FLAC stream, the pts where its last decoded frame ended
    for packet in src.demux(*[src.streams[i] for i in kept]):
        index = packet.stream.index  # the flush packet at the end has no stream_index of its own
        stream = kept[index]
        if index in flac:
            yield from _flac_packets(packet, stream, shifts[index], ends)
        elif packet.size:  # not the empty flush packet at the end (cover art has no timestamps at all)
            _move(packet, shifts[index])
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


def _seconds(packet: av.Packet) -> Fraction:
    """When a packet is due in the interleaving; one without timestamps (cover art) goes first."""
    ts = packet.dts if packet.dts is not None else packet.pts
    return Fraction(-1) if ts is None else ts * Fraction(packet.time_base)
