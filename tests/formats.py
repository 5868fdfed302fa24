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
          colour: tuple[int, int, int] | None = None, first: int = 0, sar: Fraction | None = None,
          tags: dict[str, str] | None = None, video_tags: dict[str, str] | None = None,
          audio_first: float = 0.0) -> Path:
    """Encode `frames_fhwc_u8` with `codec` at `rate` fps; `audio`: (codec, sample rate, language,
    extra tags) per track (a second of a tone); `subtitles`: (start ms, duration ms, text, language);
    `field_order` "tff"/"bff" flags the frames interlaced (through FFmpeg's setfield filter);
    `alpha` `(F, H, W)` uint8 goes into the alpha plane; `colour` (primaries, transfer, matrix);
    `first`: the first frame's pts (frames count from it), so byte-joined parts follow each other;
    `sar`: the pixels' aspect ratio; `tags`, `video_tags`: container and video stream tags;
    `audio_first`: the audio's first timestamp in seconds."""
    _, height, width, _ = frames_fhwc_u8.shape
    width, height = size or (width, height)
    with av.open(str(path), "w", format=fmt) as out:
        out.metadata.update(tags or {})
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.options = options or {}
        video.metadata.update(video_tags or {})
        if sar is not None:
            video.codec_context.sample_aspect_ratio = sar
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
            _tone(out, stream, seconds, audio_first)
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


def _tone(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float,
          first: float = 0.0) -> None:
    rate = stream.codec_context.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)  # (1, samples) mono
    frame = av.AudioFrame.from_ndarray(wave, format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, round(first * rate), Fraction(1, rate)
    for packet in stream.encode(frame):
        out.mux(packet)
    out.mux(stream.encode(None))


def cut(path: Path, fraction: float) -> Path:
    """`path` (a transport stream) without its first `fraction` of bytes, cut on a 188-byte packet:
    what a capture that started mid-broadcast holds (no first keyframe, a partial first PES)."""
    data = path.read_bytes()
    path.write_bytes(data[int(len(data) * fraction) // 188 * 188:])
    return path


def with_streams(path: Path, frames_fhwc_u8: np.ndarray, *, fmt: str, codec: str = "libx264",
                 cover: bytes | None = None, second_video: str | None = None, teletext: bool = False,
                 klv: bool = False, rate: int = 25) -> Path:
    """A video beside the other streams archives hold: `cover` (JPEG bytes) as an attached picture,
    a `second_video` (codec) at half size (a second program or camera track), DVB teletext and KLV
    metadata packets (FFmpeg has no decoder for either: they arrive as streams without a codec)."""
    _, height, width, _ = frames_fhwc_u8.shape
    with av.open(str(path), "w", format=fmt) as out:
        videos = [out.add_stream(codec, rate=rate)]
        videos[0].width, videos[0].height, videos[0].pix_fmt = width, height, "yuv420p"
        if second_video:
            videos.append(out.add_stream(second_video, rate=rate))
            videos[1].width, videos[1].height, videos[1].pix_fmt = width // 2, height // 2, "yuv420p"
        packets = []
        if cover is not None:
            art = out.add_stream("mjpeg")
            art.width = art.height = 32
            art.pix_fmt, art.disposition = "yuvj420p", av.stream.Disposition.attached_pic
            packets.append(_packet(cover, art, None))
        for stream in videos:
            for i, rgb in enumerate(frames_fhwc_u8):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(stream.width, stream.height, "yuv420p")
                frame.pts, frame.time_base = i, Fraction(1, rate)
                packets += stream.encode(frame)
            packets += stream.encode(None)
        data = []
        if teletext:
            data.append((out.add_mux_stream("dvb_teletext"), bytes([0x10]) + bytes(45)))
            data[-1][0].metadata["language"] = "deu"
        if klv:
            data.append((out.add_data_stream("klv"), bytes.fromhex("060e2b34") + bytes(12)))
        for stream, payload in data:
            packets += [_packet(payload, stream, 126000 + 10800 * i) for i in range(3)]
        packets.sort(key=lambda p: -1 if p.dts is None else p.dts * p.time_base)
        for packet in packets:
            out.mux(packet)
    return path


def _packet(payload: bytes, stream: av.stream.Stream, pts: int | None) -> av.Packet:
    packet = av.Packet(payload)
    packet.stream, packet.time_base = stream, Fraction(1, 90000)
    packet.pts = packet.dts = pts
    return packet


def with_captions(path: Path, frames_fhwc_u8: np.ndarray, text: str, *, shown: tuple[int, int] = (7, 39)) -> Path:
    """An NTSC-rate H.264 transport stream whose pictures carry an EIA-608 pop-on caption (ATSC A/53
    cc_data in an SEI before each picture's slices, one byte pair per picture), `text` on screen from
    picture `shown[0]` to `shown[1]`: what a US broadcast capture holds."""
    pairs = [(0x14, 0x20)] * 2 + [(0x14, 0x70)] * 2  # resume caption loading, row 15
    padded = text + "\0" * (len(text) % 2)
    pairs += [(ord(padded[i]), ord(padded[i + 1])) for i in range(0, len(padded), 2)] + [(0x14, 0x2F)] * 2
    script = [(0x80, 0x80)] * (shown[0] + 1 - len(pairs)) + pairs  # end of caption (display) at shown[0]
    script += [(0x80, 0x80)] * (shown[1] - len(script)) + [(0x14, 0x2C)] * 2  # erase at shown[1]
    rate = Fraction(30000, 1001)
    _, height, width, _ = frames_fhwc_u8.shape
    with av.open(str(path), "w", format="mpegts") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"x264-params": "bframes=0"}  # packets in picture order: pair i rides with picture i
        packets = []
        for i, rgb in enumerate(frames_fhwc_u8):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            packets += video.encode(frame)
        packets += video.encode(None)
        for i, packet in enumerate(packets):
            pair = script[i] if i < len(script) else (0x80, 0x80)
            captioned = av.Packet(_before_slices(bytes(packet), _cc_sei(*pair)))
            captioned.pts, captioned.dts, captioned.time_base = packet.pts, packet.dts, packet.time_base
            captioned.stream, captioned.is_keyframe = video, packet.is_keyframe
            out.mux(captioned)
    return path


def _cc_sei(first: int, second: int) -> bytes:
    """An H.264 SEI NAL unit holding one EIA-608 byte pair (odd parity) as A/53 cc_data."""
    odd = [b | 0x80 if bin(b).count("1") % 2 == 0 else b for b in (first, second)]
    cc_data = bytes([0xB5, 0x00, 0x31, *b"GA94", 0x03, 0x41, 0xFF, 0xFC, *odd, 0xFF])
    payload, escaped, zeros = bytes([4, len(cc_data)]) + cc_data + b"\x80", bytearray(), 0
    for byte in payload:  # emulation prevention: no 00 00 0x inside a NAL unit
        if zeros >= 2 and byte <= 3:
            escaped.append(3)
            zeros = 0
        escaped.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return b"\x00\x00\x00\x01\x06" + bytes(escaped)


def _before_slices(access_unit: bytes, nal: bytes) -> bytes:
    """`nal` inserted into an Annex B access unit just before its first slice."""
    at = 0
    while (at := access_unit.find(b"\x00\x00\x01", at)) >= 0:
        if access_unit[at + 3] & 0x1F in (1, 5):  # a coded slice (non-IDR or IDR)
            start = at - 1 if at and access_unit[at - 1] == 0 else at
            return access_unit[:start] + nal + access_unit[start:]
        at += 3
    return access_unit + nal
