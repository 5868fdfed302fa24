"""Assembling the final file (pipelines.restore.assemble_stage on pipelines.media.mux): containers,
blended overlaps, the source's timing, audio and subtitles, and whole restore round trips with a plain
upscale standing in for STAR."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from helpers import assert_same_timing, claim_all, decode_all, grey_frames, make_clip, media, noisy_frames, restore_run
from pipelines.listing import SourceFile
from pipelines.media.frames import read_frames
from pipelines.media.segments import write_segment
from pipelines.media.output_container import choose_container, transcoded_audio
from pipelines.media.output_format import OutputFormat
from pipelines.media.probe import probe, probe_timestamps
from pipelines.media.scenes import detect_scenes
from pipelines.media.video_info import StreamInfo, VideoInfo
from pipelines.restore.assemble_stage import DamagedSegment, assemble, finish_video, preview_still
from pipelines.restore.lease import Leases
from pipelines.restore.rows import (DEINTERLACE, DEVICE, DONE, ERROR, FAILED, FIELD_ORDER, FINGERPRINT, FPS, FRAMES,
                                    OUTPUT, PERMANENT, REL, REUSED, SECONDS, SEGMENT, SOURCE, STAGING, START_PTS,
                                    STATUS, VIDEO_ID, WINDOWS, window_columns)
from pipelines.restore.scene_windows import SceneWindow, plan_scene_windows


def stream_packets(path: Path | str, kind: str) -> list[tuple[bytes, Fraction, Fraction]]:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        return [(bytes(p), p.pts * p.time_base, p.duration * p.time_base)
                for p in container.demux(stream) if p.size]


def upscale2x(frames_fhwc_u8: np.ndarray, window: SceneWindow) -> np.ndarray:
    return frames_fhwc_u8.repeat(2, axis=1).repeat(2, axis=2)


def restore_video(src: Path | str, output: Path | str, stage: Path | str, *, window: int, overlap: int,
                  restore: Callable[[np.ndarray, SceneWindow], np.ndarray] = upscale2x, detector: str = "content",
                  **assemble_options) -> tuple[VideoInfo, np.ndarray, list[SceneWindow]]:
    """The restore job's media path end to end, with `restore` standing in for STAR."""
    info, timestamps = probe_timestamps(src)
    plan = plan_scene_windows(detect_scenes(src, detector), window, overlap)
    segments = []
    for w in plan:
        frames = read_frames(src, w.start, w.end, start_pts=int(timestamps[w.start]))
        url = f"{stage}/{w.index:05d}.mkv"
        write_segment(restore(frames, w), url, info.fps)
        segments.append((w, url))
    assemble(src, segments, output, info=info, timestamps=timestamps, **assemble_options)
    return info, timestamps, plan


# -- containers ------------------------------------------------------------------------------------


def with_streams(audio: list[str], subtitles: list[str]) -> VideoInfo:
    info = probe(media("lq/dove_002.mp4"))
    return VideoInfo(**{**info.__dict__,
                        "audio": tuple(StreamInfo(i + 1, "audio", c, None) for i, c in enumerate(audio)),
                        "subtitles": tuple(StreamInfo(9, "subtitle", c, None) for c in subtitles)})


def test_choose_container():
    assert choose_container(with_streams([], [])) == "mp4"
    assert choose_container(with_streams(["aac", "ac3"], ["mov_text"])) == "mp4"
    assert choose_container(with_streams(["aac"], ["subrip"])) == "mkv"
    assert choose_container(with_streams(["pcm_s16le"], [])) == "mkv"
    assert choose_container(with_streams(["vorbis"], ["hdmv_pgs_subtitle"])) == "mkv"
    # Audio no container would carry unchanged never fails a source: it becomes FLAC, in Matroska
    # unless MOV text subtitles (which only MP4 holds) keep the output in MP4.
    assert choose_container(with_streams(["wmav2", "aac"], [])) == "mkv"
    assert transcoded_audio(with_streams(["wmav2", "aac"], []), "mkv") == {1}
    assert choose_container(with_streams(["pcm_s24le"], ["mov_text"])) == "mp4"
    assert transcoded_audio(with_streams(["pcm_s24le"], ["mov_text"]), "mp4") == {1}


# -- whole round trips -----------------------------------------------------------------------------


def test_round_trip_real_clip_with_audio(tmp_path):
    """A real low-quality clip (DOVE 007, 316x178 at 16 fps) given an AAC track, restored 2x."""
    src = tmp_path / "dove_007_audio.mp4"
    tone = make_clip(tmp_path / "tone.mp4", grey_frames([0]), audio_seconds=2.0)
    # Remuxing keeps the real video packets as they are; the AAC track is synthetic (the clip has none).
    real_clip = str(media("lq/dove_007.mp4"))
    with av.open(real_clip) as real, av.open(str(tone)) as sound, av.open(str(src), "w") as out:
        sources = ((real, real.streams.video[0]), (sound, sound.streams.audio[0]))
        copies = [out.add_stream_from_template(stream) for _, stream in sources]  # all before muxing
        for (inp, stream), copy in zip(sources, copies):
            for packet in inp.demux(stream):
                if packet.dts is not None:
                    packet.stream = copy
                    out.mux(packet)
    info, timestamps, plan = restore_video(src, tmp_path / "out.mp4", tmp_path / "stage", window=8, overlap=2)
    assert choose_container(info) == "mp4" and len(plan) > 1

    out_info = assert_same_timing(tmp_path / "out.mp4", info, timestamps)
    assert (out_info.width, out_info.height) == (2 * info.width, 2 * info.height)
    assert stream_packets(tmp_path / "out.mp4", "audio") == stream_packets(src, "audio")
    # The pixels: a 2x nearest upscale of the source, through one H.264 encode at crf 16.
    source, output = decode_all(src), decode_all(tmp_path / "out.mp4")
    for a, b in zip(source, output):
        assert np.abs(a.repeat(2, 0).repeat(2, 1).astype(int) - b).mean() < 3.0


def test_round_trip_real_vfr_clip(tmp_path):
    """goldeneye-vfr-drop3: its own cuts, its uneven frame times and its duration survive.
    The stand-in restore shrinks 4x, so the test stays fast on two cores."""
    clip = media("scenes/goldeneye-vfr-drop3.mp4")
    info, timestamps, plan = restore_video(clip, tmp_path / "out.mp4", tmp_path / "stage", window=32,
                                           overlap=8, restore=lambda f, w: f[:, ::4, ::4])
    assert {w.scene for w in plan} == {0, 1, 2}
    out_info = assert_same_timing(tmp_path / "out.mp4", info, timestamps)
    assert out_info.variable_frame_rate and (out_info.width, out_info.height) == (320, 136)
    assert out_info.duration == info.duration == Fraction(239239, 24000)  # exact, not just within a tick


def test_round_trip_blends_overlaps(tmp_path):
    """Frame i holds grey 3i; each window adds its own offset, so every output frame shows which
    windows made it and with what weights. Uneven frame times in Matroska, with audio and subtitles."""
    count = 40
    pts = np.cumsum([0] + [40 + 20 * (i % 3) for i in range(count - 1)]).tolist()  # 40/60/80 ms
    cues = ((0, 500, b"Where are we?"), (900, 700, b"Somewhere new."))
    src = make_clip(tmp_path / "film.mkv", grey_frames([3 * i + 20 for i in range(count)]), pts=pts,
                    time_base=Fraction(1, 1000), audio_seconds=2.5, subtitles=cues, options={"crf": "0"})
    info, timestamps = probe_timestamps(src)
    assert choose_container(info) == "mkv" and info.variable_frame_rate

    offsets = [0, 40, 80]  # window k adds offsets[k % 3]: neighbours always differ by 40

    def restore(frames: np.ndarray, w: SceneWindow) -> np.ndarray:
        return np.clip(upscale2x(frames, w).astype(int) + offsets[w.index % 3], 0, 255).astype(np.uint8)

    info, timestamps, plan = restore_video(src, tmp_path / "out.mkv", tmp_path / "stage", window=10, overlap=3,
                                           restore=restore, output_format=OutputFormat(crf=0))
    assert sum(w.fade_in for w in plan) > 0

    expected = np.zeros(count)
    for w in plan:
        expected[w.start:w.end] += w.weights() * (3 * np.arange(w.start, w.end) + 20 + offsets[w.index % 3])
    shown = np.array([frame.astype(float).mean() for frame in decode_all(tmp_path / "out.mkv")])
    # lossless H.264 output; RGB<->YUV rounding only, twice: in the staged segments (H.264 4:4:4) and the output
    assert np.abs(shown - expected).max() <= 3.0
    assert_same_timing(tmp_path / "out.mkv", info, timestamps)
    assert stream_packets(tmp_path / "out.mkv", "subtitles") == stream_packets(src, "subtitles")
    assert stream_packets(tmp_path / "out.mkv", "audio") == stream_packets(src, "audio")


def test_round_trip_rotated_source(tmp_path):
    frames = grey_frames([60] * 6, size=(32, 24))
    frames[:, :4, :4] = 250
    src = make_clip(tmp_path / "phone.mp4", frames, rotation=-90)  # shown turned clockwise
    restore_video(src, tmp_path / "out.mp4", tmp_path / "stage", window=4, overlap=1)
    out = probe(tmp_path / "out.mp4")
    assert out.rotation == 0 and (out.width, out.height) == (48, 64)  # upright, 2x, no rotation tag
    assert decode_all(tmp_path / "out.mp4")[0][:8, -8:].min() > 200  # the marker, top-right


def test_round_trip_odd_tiny_frames_are_padded(tmp_path):
    values = [20 * i for i in range(6)]
    frames = grey_frames(values, size=(17, 9))
    frames[:, :, -1] = 200  # a bright last column: padding repeats it
    src = make_clip(tmp_path / "tiny.mp4", frames, pix_fmt="yuv444p", options={"crf": "0"})
    info, timestamps, _ = restore_video(src, tmp_path / "out.mp4", tmp_path / "stage", window=4, overlap=1,
                                        restore=lambda f, w: f, output_format=OutputFormat(crf=0))
    out = assert_same_timing(tmp_path / "out.mp4", info, timestamps)
    assert (out.width, out.height) == (18, 10)
    first = decode_all(tmp_path / "out.mp4")[0].astype(int)
    assert np.abs(first[:, -1] - first[:, -2]).max() <= 3  # the added column repeats the edge
    assert np.abs(first[-1] - first[-2]).max() <= 3  # and so does the added row


def test_round_trip_one_frame_on_a_bucket_like_filesystem(tmp_path):
    """Staging and output on a non-local fsspec filesystem: the path gs:// and s3:// take."""
    src = make_clip(tmp_path / "still.mp4", grey_frames([128]))
    info, timestamps, plan = restore_video(src, "memory://bucket/restored/still.mp4", "memory://bucket/stage",
                                           window=8, overlap=2)
    assert plan == [SceneWindow(0, 0, 0, 1, 0, 1, 0, 0)]
    assert_same_timing("memory://bucket/restored/still.mp4", info, timestamps)
    assert fsspec.filesystem("memory").ls("/bucket/restored", detail=False) == ["/bucket/restored/still.mp4"]


def test_round_trip_mov_text_subtitles(tmp_path):
    src = tmp_path / "captioned.mp4"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        subs = out.add_mux_stream("mov_text")
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 24)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for j, text in enumerate([b"one", b"two"]):
            packet = av.Packet(struct.pack(">H", len(text)) + text)  # a 3GPP timed-text sample
            packet.stream, packet.time_base = subs, Fraction(1, 1000)
            packet.pts, packet.dts, packet.duration = 200 * j, 200 * j, 150
            out.mux(packet)
    info, timestamps, _ = restore_video(src, tmp_path / "out.mp4", tmp_path / "stage", window=4, overlap=1)
    assert choose_container(info) == "mp4"
    cues = lambda path: [p for p in stream_packets(path, "subtitles") if p[0] != b"\x00\x00"]  # noqa: E731
    # MP4 text tracks mark the gaps between cues with empty samples, which the muxer writes itself.
    assert cues(tmp_path / "out.mp4") == cues(src) and len(cues(src)) == 2


def test_colours_keep_the_source_matrix(tmp_path):
    """A BT.709-tagged source: decoded and re-encoded with BT.709, tagged BT.709 again.
    (Converting back with the default BT.601 matrix shifts these colours by about 10 levels.)"""
    frames = np.zeros((3, 16, 32, 3), np.uint8)
    frames[:, :, :8], frames[:, :, 8:16] = [200, 30, 30], [30, 200, 30]
    frames[:, :, 16:24], frames[:, :, 24:] = [30, 30, 200], [200, 200, 40]
    src = make_clip(tmp_path / "hd.mp4", frames, colorspace=1, options={"crf": "0"})
    info, _, _ = restore_video(src, tmp_path / "out.mp4", tmp_path / "stage", window=4, overlap=1,
                               restore=lambda f, w: f, output_format=OutputFormat(crf=0))
    out = probe(tmp_path / "out.mp4")
    assert (info.colorspace, out.colorspace, out.color_range, out.color_primaries) == (1, 1, 1, 1)
    assert np.abs(read_frames(tmp_path / "out.mp4", 0, 3).astype(int) - read_frames(src, 0, 3)).mean() < 2.0


def test_failed_assembly_leaves_no_file(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", noisy_frames(20, size=(32, 24)), audio_seconds=1.0)
    info, timestamps = probe_timestamps(src)
    plan = plan_scene_windows([(0, 20)], 8, 2)
    segments = []
    for w in plan:
        write_segment(upscale2x(read_frames(src, w.start, w.end), w), tmp_path / f"s{w.index}.mkv", info.fps)
        segments.append((w, str(tmp_path / f"s{w.index}.mkv")))
    data = (tmp_path / "s2.mkv").read_bytes()
    (tmp_path / "s2.mkv").write_bytes(data[: len(data) // 3])  # a staging segment cut short
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DamagedSegment, match="s2.mkv is damaged"):  # ours, not the source's: not a BadVideo
        assemble(src, segments, tmp_path / "out.mp4")
    assert sorted(os.listdir(tmp_path)) == before  # no out.mp4, no hidden .part file

    with pytest.raises(ValueError, match="missing or repeating a window"):
        assemble(src, segments[:1] + segments[2:], tmp_path / "out.mp4")
    with pytest.raises(FileNotFoundError):
        assemble(src, [(segments[0][0], str(tmp_path / "never-written.mkv"))] + segments[1:], tmp_path / "out.mp4")
    with pytest.raises(ValueError, match="must end in one of"):
        assemble(src, segments, tmp_path / "out.avi")
    assert sorted(os.listdir(tmp_path)) == before


def test_mp4_output_refused_for_streams_it_cannot_hold(tmp_path):
    src = make_clip(tmp_path / "film.mkv", grey_frames([50] * 4), subtitles=((0, 100, b"Hi"),))
    with pytest.raises(ValueError, match=r"do not fit in MP4; name the output .*'\.mkv'"):
        assemble(src, [], tmp_path / "out.mp4")


def test_preview_still(tmp_path):
    lq = np.zeros((9, 16, 3), np.uint8)
    lq[:, 8:] = 255
    restored = np.full((36, 64, 3), 77, np.uint8)
    preview_still(lq, restored, tmp_path / "previews" / "video.png")
    still = np.asarray(Image.open(tmp_path / "previews" / "video.png"))
    assert still.shape == (36, 128, 3)
    assert still[:, :20].max() == 0 and still[:, 44:64].min() == 255  # the plain resize, left
    assert (still[:, 64:] == 77).all()  # the restored frame, right


def test_a_damaged_staging_segment_fails_the_video_for_a_retry_not_for_good(tmp_path):
    (tmp_path / "in").mkdir()
    src = make_clip(tmp_path / "in" / "clip.mp4", noisy_frames(14, size=(32, 24)))
    output, run = str(tmp_path / "out"), restore_run(tmp_path / "out", "run-1")
    info, timestamps = probe_timestamps(src)
    source = SourceFile(url=str(src), rel="clip.mp4", size=src.stat().st_size, version="1")
    rows = []
    for w in plan_scene_windows([(0, 14)], 8, 2):
        segment = tmp_path / "out" / "_staging" / "v" / f"window_{w.index:05d}.mkv"
        write_segment(upscale2x(read_frames(src, w.start, w.end), w), segment, info.fps)
        rows.append({SOURCE: source.url, REL: source.rel, FINGERPRINT: source.fingerprint, VIDEO_ID: "v",
                     STAGING: str(segment.parent), OUTPUT: f"{output}/clip.mp4", FRAMES: 14, WINDOWS: 2,
                     FPS: str(info.fps), **window_columns(w), START_PTS: int(timestamps[w.start]), STATUS: DONE,
                     ERROR: "", PERMANENT: False, SEGMENT: str(segment), SECONDS: 1.0, REUSED: False, DEVICE: "cpu",
                     DEINTERLACE: "", FIELD_ORDER: ""})
    torn = Path(rows[1][SEGMENT])
    torn.write_bytes(torn.read_bytes()[:300])  # a torn upload of the second window
    with Leases(run) as leases:
        claim_all(leases, [source])
        video = finish_video(rows, run=run)
    assert (video[STATUS], video[PERMANENT]) == (FAILED, False)  # retried by the next run
    assert "window_00001.mkv is damaged" in video[ERROR]
    assert not torn.exists() and Path(rows[0][SEGMENT]).exists()  # only that window is restored again
    assert not (tmp_path / "out" / "clip.mp4").exists()
