"""Write a video with a source's timing: encode frames at the source's own timestamps (its clock moved
to start at zero), keep its aspect ratio, audio, subtitles, chapters, attachments, cover art, timecode,
tags and further video streams in a container that can carry them (audio it cannot carry becomes
FLAC; what no container here carries is named in notes), and publish the file atomically."""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np

from pipelines.media.captions import Caption, read_captions
from pipelines.media.clock import due, earliest_start, moved, moved_chapter, ticks, within
from pipelines.media.input_container import open_container
from pipelines.media.output_container import choose_container, kept_streams, transcoded_audio
from pipelines.media.output_format import OutputFormat, picture_encoding
from pipelines.media.stream_copy import add_kept_stream, keep_tags, kept_packets
from pipelines.media.target_size import TargetSize
from pipelines.media.video_encode import add_video_stream, encode, encoded_size
from pipelines.media.video_info import StreamInfo, VideoInfo
from pipelines.storage import Source, atomic_output, open_input

# FFmpeg's muxer per output extension; MOV (for ProRes, which MP4 has no tag for) follows MP4's rules.
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Container tags that describe the old file's format, not its content; the timecode goes on the video
# stream (MP4 writes it as a tmcd track from there).
_FORMAT_TAGS = ("major_brand", "minor_version", "compatible_brands", "encoder", "timecode")
# The container tags FFmpeg's MP4 muxer writes in its plain (iTunes-style) metadata; it drops any other.
_MP4_TAGS = frozenset({"title", "artist", "album_artist", "composer", "album", "date", "comment", "genre", "copyright",
                       "grouping", "lyrics", "description", "synopsis", "show", "episode_id", "network", "keywords",
                       "track", "disc", "location", "creation_time", "encoding_tool", "author", "media_type"})


def write_video(
    source: Source,
    frames: Iterator[np.ndarray],
    output_url: str | os.PathLike,
    info: VideoInfo,
    timestamps: np.ndarray,
    *,
    output_format: OutputFormat = OutputFormat(),
    square_pixels: bool = False,
    target: TargetSize | None = None,
    excerpt: bool = False,
    fence: Callable[[], None] | None = None,
) -> tuple[str, ...]:
    """Write `frames` ((H, W, 3) uint8, or uint16 from a deep-colour source, one per source frame) to
    `output_url` (".mp4", ".mov" or ".mkv": see `choose_container`) with the streams of `source` that
    `kept_streams` keeps, its chapters, container tags, timecode and (in Matroska) attachments; return
    the notes on the streams left out.

    Timing: frame i is shown at the source's pts of frame i (`timestamps`) in the source's time_base,
    so variable frame rates and the duration carry over (Matroska rounds them to its millisecond
    clock). Every stream's clock is moved by the same amount so that the earliest of them (picture,
    sound or subtitles) starts at 0: a broadcast capture whose clock stood at 10 hours, or one cut
    just before its 33-bit clock wraps (negative timestamps), plays from 0 for as long as the source,
    with the audio's lead or lag over the picture kept.

    Picture: `output_format`'s codec in the pixel format `output_format.picture_encoding` gives (by
    default H.264 yuv420p, yuv420p10le for uint16 frames), or FFV1 yuva444p in Matroska for (H, W, 4)
    RGBA frames (a source with alpha), tagged with the source's colour primaries, transfer and matrix
    and its sample aspect ratio (anamorphic PAL and NTSC keep their display shape); `square_pixels`
    instead resamples each frame (Lanczos) to square pixels at the same height, and `target` to its size
    for the source's display shape (square pixels too: media.target_size). An odd size is padded
    by one row or column repeating the edge (no pixel is dropped). Frames are upright, so no rotation
    is written. Audio and subtitles are copied packet for packet with their languages, titles and
    dispositions; audio the container cannot carry is transcoded to FLAC (`transcoded_audio`). Nothing
    appears at `output_url` unless the whole file was written (and `fence`, called just before, raised
    nothing: see `storage.atomic_output`).

    `excerpt`: the frames are a part of the source's picture (a sample run's), from `info.start_pts` to
    `info.end_pts` at `timestamps`; the output starts where they do, and the sound, subtitles and
    captions are cut to them (packets that start inside), chapters left out.
    """
    fmt = _FORMATS.get(os.path.splitext(os.fspath(output_url))[1].lower())
    if fmt is None:
        raise ValueError(f"output {output_url!r} must end in one of {sorted(_FORMATS)}")
    container = "mkv" if fmt == "matroska" else "mp4"  # the family whose stream rules apply
    if container == "mp4" and choose_container(info) == "mkv":
        raise ValueError(f"the source's streams ({[s.codec for s in info.audio + info.subtitles + info.attachments]}) "
                         f"do not fit in MP4; name the output by choose_container(info), here '.mkv'")
    flac = transcoded_audio(info, container)
    streams, notes = kept_streams(info, container)
    captions = read_captions(source, info.end_pts * info.time_base) if info.captions else []
    with atomic_output(output_url, fence) as tmp, open_input(source) as f:
        src = open_container(f)
        try:
            tags = {k: v for k, v in src.metadata.items() if k.lower() not in _FORMAT_TAGS}
            options, dropped = _mp4_options(info, tags, streams) if container == "mp4" else ({}, [])
            if dropped:
                notes += (f"container tags {', '.join(sorted(dropped))} not carried: MP4 keeps tags beyond the "
                          f"standard ones only without cover art",)
            with av.open(tmp, "w", format=fmt, options=options) as out:
                out.metadata.update(tags)
                first = next(frames)
                encoding = picture_encoding(output_format, info.pix_fmt, deep=first.dtype == np.uint16,
                                            alpha=first.shape[-1] == 4)
                video = add_video_stream(out, info, encoded_size(first, info, square_pixels, target),
                                         encoding)
                square = square_pixels or target is not None
                video.codec_context.sample_aspect_ratio = Fraction(1) if square else info.upright_sar
                keep_tags(src.streams[info.video_index], video)
                if info.timecode:
                    video.metadata["timecode"] = info.timecode
                kept = {s.index: add_kept_stream(out, src.streams[s.index], s.index in flac) for s in streams}
                text = _caption_packets(out, captions, container) if captions else iter(())
                if fmt == "matroska":
                    for a in info.attachments:
                        attachment = src.streams[a.index]
                        out.add_attachment(attachment.name, attachment.mimetype, bytes(attachment.data))
                if excerpt:
                    origin = info.start_pts * info.time_base
                    _seek(src, origin)
                else:
                    origin = earliest_start(src, info, kept)
                    out.set_chapters([moved_chapter(c, origin) for c in src.chapters()])
                encoded = encode(video, itertools.chain([first], frames), timestamps, info, container,
                                 shift=ticks(origin, info.time_base))
                others = heapq.merge(kept_packets(src, kept, flac, origin), moved(text, origin), key=due)
                if excerpt:
                    others = within(others, (info.end_pts - info.start_pts) * info.time_base)
                # Interleave by time, so the muxer never has to buffer a whole audio track.
                for packet in heapq.merge(encoded, others, key=due):
                    out.mux(packet)
        finally:
            src.close()
    return notes


def _seek(src: av.container.InputContainer, seconds: Fraction) -> None:
    """Start demuxing the kept streams at or just before `seconds` (an excerpt's start) instead of at the
    file's start; where the demuxer cannot seek, it reads from the start (`within` drops the rest)."""
    try:
        src.seek(max(0, math.floor(seconds * av.time_base)), backward=True)
    except av.error.FFmpegError:
        pass  # the demuxer stays where it was, at the start


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


def _caption_packets(out: av.container.OutputContainer, captions: list[Caption], container: str
                     ) -> Iterator[av.Packet]:
    """A subtitle track of the closed captions the source's pictures carried (media.captions): MOV
    text in MP4, SubRip in Matroska, on the source's clock in milliseconds (`moved` shifts it)."""
    stream = out.add_mux_stream("mov_text" if container == "mp4" else "subrip")
    stream.metadata["title"] = "Closed captions (EIA-608 CC1, from the source's picture)"
    for caption in captions:
        text = caption.text.encode()
        # A MOV text sample is its UTF-8 length (16-bit, big-endian) and the text; SubRip is the text.
        packet = av.Packet(len(text).to_bytes(2, "big") + text if container == "mp4" else text)
        packet.stream, packet.time_base = stream, Fraction(1, 1000)
        packet.pts = packet.dts = math.floor(caption.start * 1000)
        packet.duration = max(1, math.floor(caption.end * 1000) - packet.pts)
        yield packet
