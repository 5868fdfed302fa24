"""Small synthesized samples of the formats real archives hold (issue 12): tape and broadcast captures
(interlaced DV, MPEG-2, H.264), old containers with the audio codecs of their day (WMV+WMA, FLV+
Nellymoser, AVI+ADPCM), ProRes masters with 24-bit PCM, 10-bit HEVC, ProRes 4444 with alpha, and
Matroska with two audio tracks, subtitles, chapters and a font. All written with PyAV, in a second."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np


def moving_bar(index: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Picture `index` of a white bar moving right 3 px per picture over a two-tone background,
    `(H, W, 3)` uint8: enough motion for two fields of one frame to disagree."""
    width, height = size
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, :, 2] = 90
    rgb[height // 4: height // 2, :, 1] = 140
    x = (6 + 3 * index) % (width - 8)
    rgb[:, x:x + 8] = 255
    return rgb


def small_test_pattern(frames: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """FFmpeg's `testsrc` (colour bars, a scrolling gradient, a frame counter), `(F, H, W, 3)` uint8:
    at this size its lettering is a row or two high, fine vertical detail that idet takes for combing."""
    graph = av.filter.Graph()
    source = graph.add("testsrc", f"size={size[0]}x{size[1]}:rate=25")
    graph.link_nodes(source, graph.add("format", "rgb24"), graph.add("buffersink")).configure()
    return np.stack([graph.pull().to_ndarray() for _ in range(frames)])


def woven(frames: int, size: tuple[int, int] = (64, 48), top_first: bool = True) -> np.ndarray:
    """Interlaced frames from pictures at twice the rate, `(F, H, W, 3)`: the first field in time
    (top rows for top-field-first) from picture 2i, the other from 2i+1. What a 50i camera records."""
    out = []
    for i in range(frames):
        first, second = moving_bar(2 * i, size), moving_bar(2 * i + 1, size)
        frame = first.copy()
        rows = slice(1, None, 2) if top_first else slice(0, None, 2)
        frame[rows] = second[rows]
        out.append(frame)
    return np.stack(out)


def telecined(film_frames: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Film pictures A B C D ... carried by 3:2 pulldown, `(5 * film_frames / 4, H, W, 3)`: frames
    [A A] [B B] [B C] [C D] [D D] as (top field, bottom field), what hard-telecined NTSC film holds."""
    film = [moving_bar(2 * i, size) for i in range(film_frames)]  # 6 px per film frame: fast enough to comb
    pattern = ((0, 0), (1, 1), (1, 2), (2, 3), (3, 3))  # (top from, bottom from) per frame of a cycle
    out = []
    for cycle in range(film_frames // 4):
        for top, bottom in pattern:
            frame = film[4 * cycle + top].copy()
            frame[1::2] = film[4 * cycle + bottom][1::2]
            out.append(frame)
    return np.stack(out)


# One sample of each container whose header-only and truncated copies must fail with a reason (issue 25):
# name -> (video codec, container, audio codec)
CONTAINERS = {
    "film.mkv": ("libx264", "matroska", "mp2"), "clip.mp4": ("libx264", "mp4", "mp2"),
    "master.mov": ("mpeg4", "mov", "mp2"), "capture.avi": ("mpeg4", "avi", "mp2"),
    "tape.mpg": ("mpeg2video", "mpeg", "mp2"), "broadcast.ts": ("mpeg2video", "mpegts", "mp2"),
    "old.wmv": ("wmv2", "asf", "wmav2"),
}


def header_only(name: str, whole: bytes) -> bytes:
    """The bytes of `whole` (a CONTAINERS sample as `write` makes it) before its first audio or video
    data: what an upload cut off right after the header leaves."""
    ext = name.rsplit(".", 1)[1]
    if ext == "mkv":
        return whole[:whole.index(b"\x1f\x43\xb6\x75")]  # up to the first Cluster
    if ext in ("mp4", "mov"):
        return whole[:int.from_bytes(whole[:4], "big")]  # the 'ftyp' box (the muxer writes 'moov' last)
    if ext == "avi":
        return whole[:whole.index(b"movi") + 4]  # the headers, up to the 'movi' list's first chunk
    if ext == "mpg":
        return whole[:whole.index(b"\x00\x00\x01\xe0")]  # pack and system headers, before the first video PES
    if ext == "ts":
        return whole[:3 * 188]  # FFmpeg's SDT, PAT and PMT packets
    return whole[:int.from_bytes(whole[16:24], "little")]  # ASF: the header object


def truncated(whole: bytes) -> bytes:
    """The first 60% of `whole`, cut at an odd length (inside a packet of any container)."""
    return whole[:len(whole) * 6 // 10 | 1]


def write(path: Path, frames_fhwc_u8: np.ndarray, *, codec: str, fmt: str | None = None, pix_fmt: str = "yuv420p",
          rate: int = 25, options: dict[str, str] | None = None, field_order: str | None = None,
          audio: tuple[tuple[str, int, str, dict[str, str]], ...] = (), size: tuple[int, int] | None = None,
          subtitles: tuple[tuple[int, int, bytes, str], ...] = (), chapters: int = 0,
          attachment: bytes | None = None, alpha: np.ndarray | None = None,
          colour: tuple[int, int, int] | None = None, first: int = 0) -> Path:
    """Encode `frames_fhwc_u8` with `codec` at `rate` fps; `audio`: (codec, sample rate, language,
    extra tags) per track (a second of a tone); `subtitles`: (start ms, duration ms, text, language);
    `field_order` "tff"/"bff" flags the frames interlaced (through FFmpeg's setfield filter);
    `alpha` `(F, H, W)` uint8 goes into the alpha plane; `colour` (primaries, transfer, matrix);
    `first`: the first frame's pts (frames count from it), so byte-joined parts follow each other."""
    _, height, width, _ = frames_fhwc_u8.shape
    width, height = size or (width, height)
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.options = options or {}
        if colour is not None:
            cc = video.codec_context
            cc.color_primaries, cc.color_trc, cc.colorspace = colour
        tracks = []
        for codec_name, sample_rate, language, tags in audio:
            stream = out.add_stream(codec_name, rate=sample_rate)
            stream.layout = "mono"
            stream.metadata["language"] = language
            stream.metadata.update(tags)
            stream.bit_rate = 64000  # WMA's encoder has no default
            tracks.append(stream)
        if len(tracks) > 1:
            tracks[1].disposition = av.stream.Disposition.comment
        subs = None
        if subtitles:
            subs = out.add_mux_stream("subrip")
            subs.metadata["language"] = subtitles[0][3]
        if attachment is not None:
            out.add_attachment("font.ttf", "application/x-truetype-font", attachment)
        if chapters:
            step = len(frames_fhwc_u8) * 1000 // rate // chapters
            out.set_chapters([{"id": k + 1, "start": k * step, "end": (k + 1) * step, "time_base": Fraction(1, 1000),
                               "metadata": {"title": f"Part {k + 1}"}} for k in range(chapters)])
        graph = _field_flags(width, height, pix_fmt, rate, field_order) if field_order else None
        for i, rgb in enumerate(frames_fhwc_u8):
            if alpha is not None:
                rgba = np.concatenate([rgb, alpha[i][..., None]], axis=-1)
                frame = av.VideoFrame.from_ndarray(rgba, format="rgba").reformat(format=pix_fmt)
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(width, height, pix_fmt)
            frame.pts, frame.time_base = first + i, Fraction(1, rate)
            if graph is not None:
                graph.push(frame)
                frame = graph.pull()
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        seconds = len(frames_fhwc_u8) / rate
        for stream in tracks:
            _tone(out, stream, seconds)
        for start_ms, duration_ms, text, _ in subtitles:
            packet = av.Packet(text)
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts, packet.dts, packet.duration = start_ms, start_ms, duration_ms
            out.mux(packet)
    return path


def _field_flags(width: int, height: int, pix_fmt: str, rate: int, order: str) -> av.filter.Graph:
    """FFmpeg's setfield: marks frames interlaced with a field order, as a capture card does."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format=pix_fmt, time_base=Fraction(1, rate))
    graph.link_nodes(source, graph.add("setfield", order), graph.add("buffersink")).configure()
    return graph


def _tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)  # (1, samples) mono
    frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
    for packet in stream.encode(frame):
        out.mux(packet)
    out.mux(stream.encode(None))
