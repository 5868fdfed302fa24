"""Tests of pipelines.media.probe on real clips from ../shared/media and on bad inputs written here with PyAV."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from helpers import audio_only, media, mux_silence
from pipelines.media.probe import probe, probe_timestamps
from pipelines.media.video_info import BadVideo


def write_clip(path: Path, count: int = 12, size: tuple[int, int] = (32, 24), *, pts: list[int] | None = None,
               time_base: Fraction = Fraction(1, 24), pix_fmt: str = "yuv420p", rotation: int | None = None,
               fmt: str | None = None) -> Path:
    """An H.264 clip whose frame i is grey level 10 * i, with the given pts (default 0, 1, 2, ...)."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = stream.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts else i), time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def decoded_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


# -- real clips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, codec, size, frames, fps, vfr", [
    ("scenes/testvideo.mp4", "h264", (1280, 720), 720, Fraction(30000, 1001), False),
    ("scenes/goldeneye-vfr-drop3.mp4", "h264", (1280, 544), 160, Fraction(3840000, 239239), True),
    ("scenes/fades.mp4", "mpeg4", (480, 320), 250, Fraction(25), False),
    ("lq/dove_002.mp4", "h264", (318, 180), 32, Fraction(16), False),
    ("lq/seedvr2_Eyes_212x120.mp4", "h264", (212, 120), 45, Fraction(25), False),
])
def test_probe_real_clips(name, codec, size, frames, fps, vfr):
    info, timestamps = probe_timestamps(media(name))
    assert (info.codec, (info.width, info.height), info.frame_count, info.fps) == (codec, size, frames, fps)
    assert info.variable_frame_rate is vfr
    assert info.rotation == 0 and info.audio == () and info.subtitles == ()
    assert info.container.startswith("mov,mp4")
    assert len(timestamps) == frames and np.all(np.diff(timestamps) > 0)  # presentation order
    assert info.duration == (info.end_pts - info.start_pts) * info.time_base


def test_frame_count_is_the_decoded_count():
    for name in ["lq/dove_002.mp4", "lq/dove_007.mp4", "scenes/counter.mp4", "scenes/fades.mp4"]:
        assert probe(media(name)).frame_count == decoded_count(media(name))


def test_durations_of_real_clips():
    # testvideo: 720 frames 1001/30000 s apart, but its track says it ends at 720700 ticks (the last
    # frame shown for 981): the file's own figure wins. drop3: pts steps of 1001 or 2002 ticks.
    testvideo = probe(media("scenes/testvideo.mp4"))
    assert testvideo.duration == Fraction(720700, 30000) and testvideo.end_pts == 720700
    drop3, timestamps = probe_timestamps(media("scenes/goldeneye-vfr-drop3.mp4"))
    assert drop3.duration == Fraction(239239, 24000)
    assert set(np.diff(timestamps).tolist()) == {1001, 2002}


def test_probe_reads_through_fsspec(tmp_path):
    clip = media("lq/dove_007.mp4")
    expected = probe(clip)
    assert probe(f"file://{clip}") == expected
    with fsspec.open(str(clip), "rb") as f:
        assert probe(f) == expected  # an open file object, as from s3fs or gcsfs
    fs = fsspec.filesystem("memory")  # not local disk: the same code path a bucket takes
    fs.pipe("/probe-test/dove_007.mp4", clip.read_bytes())
    assert probe("memory://probe-test/dove_007.mp4") == expected


# -- generated inputs, good and bad --------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(BadVideo, match=r"empty file \(0 bytes\)"):
        probe(tmp_path / "empty.mp4")


def test_text_file_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is a shot list, not a video\n" * 20)
    with pytest.raises(BadVideo, match="not a recognised video container"):
        probe(tmp_path / "notes.mp4")


def test_truncated_mp4(tmp_path):
    data = media("lq/dove_002.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(BadVideo, match=r"truncated MP4/MOV file: box 'mdat' at byte \d+ needs \d+ bytes, only"):
        probe(tmp_path / "cut.mp4")


def test_truncated_mp4_with_index_first(tmp_path):
    """A faststart file (index before the data) opens fine when cut; the box sizes still tell."""
    src = media("lq/dove_002.mp4")
    faststart = {"movflags": "faststart"}
    with av.open(str(src)) as inp, av.open(str(tmp_path / "fast.mp4"), "w", options=faststart) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "fast-cut.mp4").write_bytes(data[: len(data) // 2])
    assert probe(tmp_path / "fast.mp4").frame_count == 32
    with pytest.raises(BadVideo, match="truncated MP4/MOV file: box 'mdat'"):
        probe(tmp_path / "fast-cut.mp4")


def test_truncated_matroska(tmp_path):
    data = write_clip(tmp_path / "whole.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    assert probe(tmp_path / "whole.mkv").frame_count == 12
    with pytest.raises(BadVideo, match="truncated Matroska/WebM file: the segment is \\d+ bytes short"):
        probe(tmp_path / "cut.mkv")


def test_audio_only_file(tmp_path):
    audio_only(tmp_path / "speech.mp4")
    with pytest.raises(BadVideo, match=r"no video stream \(audio-only or data-only file\)"):
        probe(tmp_path / "speech.mp4")


def test_no_decodable_frames(tmp_path):
    """Every video packet overwritten with noise: the container is fine, the pictures are not."""
    path = write_clip(tmp_path / "noise.mp4")
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for pos, size in spans:
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(BadVideo, match=r"no decodable video frames \(12 packets, none decodes\)"):
        probe(path)


def test_one_frame_video(tmp_path):
    info, timestamps = probe_timestamps(write_clip(tmp_path / "one.mp4", count=1))
    assert info.frame_count == 1 and list(timestamps) == [0]
    assert info.duration == Fraction(1, 24) and not info.variable_frame_rate


def test_odd_tiny_dimensions(tmp_path):
    info = probe(write_clip(tmp_path / "odd.mp4", size=(17, 9), pix_fmt="yuv444p"))
    assert (info.width, info.height, info.pix_fmt, info.frame_count) == (17, 9, "yuv444p", 12)


@pytest.mark.parametrize("fmt, suffix", [(None, "mp4"), ("matroska", "mkv")])
def test_variable_frame_rate(tmp_path, fmt, suffix):
    pts = [0, 1000, 3000, 4000, 7000, 8000, 9000, 13000, 14000, 15000, 17000, 18000]  # ms on 1/24000
    info, timestamps = probe_timestamps(write_clip(tmp_path / f"vfr.{suffix}", pts=pts,
                                                   time_base=Fraction(1, 24000), fmt=fmt))
    assert info.variable_frame_rate and info.frame_count == 12
    seconds = [float(t * info.time_base) for t in timestamps]
    assert seconds == pytest.approx([p / 24000 for p in pts], abs=float(info.time_base))


def test_constant_rate_on_a_millisecond_clock_is_not_vfr(tmp_path):
    """24 fps in Matroska is stored as 0, 42, 83, 125 ms...: one tick of jitter, still CFR."""
    info, timestamps = probe_timestamps(write_clip(tmp_path / "cfr.mkv", fmt="matroska"))
    assert info.time_base == Fraction(1, 1000) and set(np.diff(timestamps).tolist()) == {41, 42}
    assert not info.variable_frame_rate


@pytest.mark.parametrize("rotation, expected", [(90, 90), (-90, 270), (180, 180), (0, 0)])
def test_display_rotation(tmp_path, rotation, expected):
    info = probe(write_clip(tmp_path / "phone.mp4", size=(32, 24), rotation=rotation))
    assert info.rotation == expected
    assert (info.width, info.height) == (32, 24)  # coded size is before rotation
    assert info.display_size == ((24, 32) if expected in (90, 270) else (32, 24))


def test_audio_and_subtitle_streams_are_listed(tmp_path):
    path = tmp_path / "film.mkv"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        subs = out.add_mux_stream("subrip")
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        mux_silence(out, audio, 5)
        packet = av.Packet(b"Hello")
        packet.stream, packet.time_base = subs, Fraction(1, 1000)
        packet.pts, packet.dts, packet.duration = 0, 0, 200
        out.mux(packet)
    info = probe(path)
    assert [(s.kind, s.codec) for s in info.audio + info.subtitles] == [("audio", "aac"), ("subtitle", "subrip")]
    assert info.container.startswith("matroska")


def test_corrupt_frame_mid_file_still_probes(tmp_path):
    """Probing does not decode every frame: a damaged picture is read_frames' business."""
    path = write_clip(tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    _, pos, size = packets[6]
    data = bytearray(path.read_bytes())
    data[pos + size // 4: pos + size // 2] = np.random.default_rng(1).integers(0, 256, size // 2 - size // 4,
                                                                               dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    assert probe(path).frame_count == 12


def test_cover_art_is_not_the_video_stream(tmp_path):
    """An audio file with an attached picture must not be taken for a one-frame video."""
    src = tmp_path / "song.m4a"
    with av.open(str(src), "w", format="mp4") as out:
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        art = out.add_stream("mjpeg", rate=1)
        art.width, art.height, art.pix_fmt = 16, 16, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        frame.pts, frame.time_base = 0, Fraction(1, 1)
        out.mux(art.encode(frame))
        out.mux(art.encode(None))
        mux_silence(out, audio, 5)
    with av.open(str(src)) as container:
        if not any(s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video):
            pytest.skip("this FFmpeg build does not read the cover back as an attached picture")
    with pytest.raises(BadVideo, match="no video stream"):
        probe(src)


def test_copy_of_clip_is_probed_identically(tmp_path):
    shutil.copy(media("lq/seedvr2_Eyes_212x120.mp4"), tmp_path / "eyes.mp4")
    assert probe(tmp_path / "eyes.mp4") == probe(media("lq/seedvr2_Eyes_212x120.mp4"))
