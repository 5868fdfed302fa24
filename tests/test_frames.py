"""Reading windows of frames from a source (pipelines.media.frames: seeks, rotation, damaged frames) and
the lossless staging segments and all-or-nothing outputs the restore actors write."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from formats import moving_bar
from helpers import decode_all, grey_frames, make_clip, media, noisy_frames, psnr
from pipelines.media.frames import read_frames
from pipelines.media.segments import iter_segment, write_segment
from pipelines.media.probe import probe, probe_timestamps
from pipelines.media.video_info import BadVideo
from pipelines.storage import atomic_output


# -- read_frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, windows", [
    ("lq/dove_002.mp4", [(0, 5), (10, 17), (25, 32), (31, 32)]),
    ("scenes/goldeneye-vfr-drop3.mp4", [(0, 3), (55, 70), (100, 101), (150, 160)]),
])
def test_read_frames_is_the_sequential_decode(name, windows):
    clip = media(name)
    reference = decode_all(clip)
    _, timestamps = probe_timestamps(clip)
    for start, end in windows:
        frames = read_frames(clip, start, end, start_pts=int(timestamps[start]))
        assert frames.dtype == np.uint8 and frames.shape == (end - start, *reference[0].shape)
        assert np.array_equal(frames, np.stack(reference[start:end]))
    assert np.array_equal(read_frames(clip, *windows[1]), frames_at(reference, windows[1]))  # finds its pts


def frames_at(reference: list[np.ndarray], window: tuple[int, int]) -> np.ndarray:
    return np.stack(reference[window[0]:window[1]])


def test_read_frames_past_the_end(tmp_path):
    clip = media("lq/dove_002.mp4")
    with pytest.raises(BadVideo, match=r"window \[30, 40\) runs past the last frame \(32 frames\)"):
        read_frames(clip, 30, 40)
    with pytest.raises(ValueError, match="empty or negative"):
        read_frames(clip, 5, 5)


@pytest.mark.parametrize("rotation, corner", [(90, (-1, 0)), (-90, (0, -1)), (180, (-1, -1))])
def test_read_frames_turns_frames_upright(tmp_path, rotation, corner):
    frames = grey_frames([40] * 4, size=(32, 24))
    frames[:, :4, :4] = 255  # a marker in the coded frame's top-left corner
    clip = make_clip(tmp_path / "phone.mp4", frames, rotation=rotation)
    upright = read_frames(clip, 1, 3)
    assert upright.shape == ((2, 32, 24, 3) if rotation != 180 else (2, 24, 32, 3))
    row, col = corner  # where a counter-clockwise turn of `rotation` degrees moves that corner
    assert upright[0, row, col].min() > 200 and upright[0, 0 if row else -1, 0 if col else -1].max() < 100


def corrupt_clip(tmp_path: Path, codec: str, damaged: int = 13) -> Path:
    """A 24-frame clip with noise written into the middle of frame `damaged`'s packet.

    FFmpeg's H.264 decoder drops such a frame (an error, no picture); its MPEG-4 Part 2 decoder
    (DivX/Xvid archives) conceals the damage and flags the picture as corrupt. Both are covered.
    """
    clip = make_clip(tmp_path / "damaged.mp4", noisy_frames(24), codec=codec)
    with av.open(str(clip)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    _, pos, size = packets[damaged]
    data = bytearray(clip.read_bytes())
    noise = np.random.default_rng(1).integers(0, 256, size // 2, dtype=np.uint8).tobytes()
    data[pos + size // 4: pos + size // 4 + len(noise)] = noise
    clip.write_bytes(bytes(data))
    return clip


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_corrupt_frame_repeats_the_previous_one(tmp_path, caplog, codec):
    clip = corrupt_clip(tmp_path, codec)
    with caplog.at_level(logging.WARNING, logger="pipelines.media.frames"):
        frames = read_frames(clip, 8, 16)
    assert frames.shape[0] == 8
    assert np.array_equal(frames[5], frames[4])  # frame 13 is frame 12 again
    assert "damaged frame(s) 13 of window [8, 16)" in caplog.text
    assert probe(clip).frame_count == 24  # timing and count are untouched
    first = read_frames(clip, 13, 15)  # the window's own first frame: taken from before the window
    assert np.array_equal(first[0], frames[4])


def test_damaged_keyframe_at_the_window_start(tmp_path):
    """MPEG-4 Part 2 puts a keyframe every 12 frames; the window starting on a damaged one
    repeats frame 11, decoded from the keyframe before."""
    clip = corrupt_clip(tmp_path, "mpeg4", damaged=12)
    reference = decode_all(clip)
    frames = read_frames(clip, 12, 14)
    assert np.array_equal(frames[0], reference[11])


def decoder_verdict(clip: Path, index: int) -> str:
    """What a plain sequential decode makes of frame `index`: "dropped", "flagged" or "clean"."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        pictures = {}
        for packet in container.demux(stream):
            try:
                pictures.update({f.pts: f.is_corrupt for f in stream.decode(packet)})
            except av.error.FFmpegError:
                pass
        _, timestamps = probe_timestamps(clip)
        pts = int(timestamps[index])
        return "dropped" if pts not in pictures else "flagged" if pictures[pts] else "clean"


@pytest.mark.parametrize("codec, damaged, verdict", [("libx264", 13, "dropped"), ("mpeg4", 17, "flagged")])
def test_corrupt_frame_policies(tmp_path, codec, damaged, verdict):
    clip = corrupt_clip(tmp_path, codec, damaged=damaged)
    assert decoder_verdict(clip, damaged) == verdict  # both kinds of damage are covered
    with pytest.raises(BadVideo, match=rf"corrupt or undecodable frames {damaged} in window \[12, 20\)"):
        read_frames(clip, 12, 20, on_corrupt="raise")
    frames = read_frames(clip, 12, 20, on_corrupt="conceal")
    k = damaged - 12
    # "conceal" keeps a flagged picture; a frame the decoder never produced is still repeated.
    assert np.array_equal(frames[k], frames[k - 1]) is (verdict == "dropped")


def test_many_corrupt_frames_in_a_row_fail_the_window(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", noisy_frames(24), codec="mpeg4")
    with av.open(str(clip)) as container:
        packets = sorted((p.pts, p.pos, p.size) for p in container.demux(video=0) if p.size)
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(2)
    for _, pos, size in packets[5:15]:
        noise = rng.integers(0, 256, size // 2 - size // 4, dtype=np.uint8)
        data[pos + size // 4: pos + size // 2] = noise.tobytes()
    clip.write_bytes(bytes(data))
    with pytest.raises(BadVideo, match=r"10 consecutive corrupt frames in window \[0, 24\) \(frames 5-14\)"):
        read_frames(clip, 0, 24)


# -- staging segments and atomic outputs -----------------------------------------------------------


@pytest.mark.parametrize("size", [(17, 9), (64, 48)])
def test_segment_round_trip_is_exact_where_lossless(tmp_path, size):
    """FFV1 where asked (an output with alpha is lossless), and always for 16-bit frames: bit-exact."""
    frames = noisy_frames(5, size=size)
    write_segment(frames, tmp_path / "seg" / "00001.mkv", Fraction(30000, 1001), lossless=True)
    assert np.array_equal(np.stack(list(iter_segment(tmp_path / "seg" / "00001.mkv"))), frames)
    assert os.listdir(tmp_path / "seg") == ["00001.mkv"]  # no temporary left behind
    deep = frames.astype(np.uint16) * 257 + 3
    write_segment(deep, tmp_path / "seg" / "00002.mkv", 24)
    assert np.array_equal(np.stack(list(iter_segment(tmp_path / "seg" / "00002.mkv"))), deep)


@pytest.mark.parametrize("size", [(17, 9), (64, 48)])
def test_8_bit_segments_are_visually_lossless_h264(tmp_path, size):
    """8-bit windows are staged as H.264 4:4:4 at crf 12: a picture's detail comes back at PSNR far
    above the final encode's (hard synthetic edges 40 dB, real detail 48-50 dB: jobs/measure/staging.py);
    even uniform noise, the worst case for any lossy codec, keeps 35 dB."""
    bars = np.stack([moving_bar(i, size) for i in range(5)])
    noise = noisy_frames(5, size=size)
    for name, frames, floor in (("bars", bars, 40), ("noise", noise, 35)):
        write_segment(frames, tmp_path / f"{name}.mkv", Fraction(30000, 1001))
        with av.open(str(tmp_path / f"{name}.mkv")) as container:
            assert (container.streams.video[0].codec_context.name, container.streams.video[0].format.name) == (
                "h264", "yuv444p")
        staged = np.stack(list(iter_segment(tmp_path / f"{name}.mkv")))
        assert staged.shape == frames.shape and staged.dtype == np.uint8
        assert psnr(staged, frames) > floor, (name, psnr(staged, frames))


def test_segment_on_a_bucket_like_filesystem():
    frames = noisy_frames(3, size=(20, 10))
    write_segment(frames, "memory://staging/video/00000.mkv", 24, lossless=True)
    assert np.array_equal(np.stack(list(iter_segment("memory://staging/video/00000.mkv"))), frames)


@pytest.mark.parametrize("folder", ["local", "memory://atomic-test"])
def test_atomic_output_leaves_nothing_on_error(tmp_path, folder):
    base = str(tmp_path) if folder == "local" else folder
    fs, root = fsspec.core.url_to_fs(base)
    with pytest.raises(RuntimeError, match="encoder died"):
        with atomic_output(f"{base}/out.mp4") as tmp:
            Path(tmp).write_bytes(b"half a video")
            raise RuntimeError("encoder died")
    assert not fs.exists(f"{root}/out.mp4")
    assert [p for p in fs.find(root) if "out.mp4" in p] == []
    with atomic_output(f"{base}/out.mp4") as tmp:
        Path(tmp).write_bytes(b"a whole video")
    assert fs.cat(f"{root}/out.mp4") == b"a whole video"


def test_write_segment_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\) uint8"):
        write_segment(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mkv", 24)
