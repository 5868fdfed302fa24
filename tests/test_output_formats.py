"""Masters and delivery copies (issue 26 point 1): each codec's output decodes to the restored frames
within that codec's loss, keeps the source's 4:2:2 and 10 bits where the codec carries them, and goes
in a container that carries it and the source's streams."""

from __future__ import annotations

import av
import numpy as np
import pytest

from formats import small_test_pattern, write
from helpers import luma, psnr
from pipelines.media.frames import read_frames
from pipelines.media.mux import write_video
from pipelines.media.output_container import choose_container
from pipelines.media.output_format import OutputFormat, picture_encoding
from pipelines.media.probe import probe_timestamps

FRAMES = 6


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """An 8-bit 4:2:0 H.264 clip with AAC, and a 10-bit 4:2:2 FFV1 clip (a tape capture's master)."""
    root = tmp_path_factory.mktemp("sources")
    pattern = small_test_pattern(FRAMES)
    return {
        "420p8": write(root / "a.mp4", pattern, codec="libx264", options={"crf": "0"},
                       audio=(("aac", 48000, "eng", {}),)),
        "422p10": write(root / "b.mkv", pattern, codec="ffv1", pix_fmt="yuv422p10le"),
    }


def _restored(src):
    """The stand-in restoration: the source's own frames (uint16 for the 10-bit source)."""
    info, timestamps = probe_timestamps(src)
    return info, timestamps, read_frames(src, 0, len(timestamps), start_pts=int(timestamps[0]))


# codec, source, container, pixel format written, least luma PSNR (dB) to the restored frames (crf 16;
# measured: H.264 37-42, H.265 43-46, ProRes HQ 40-41, FFV1 47 from 8 bits and 68 from 10)
CASES = [
    ("h264", "420p8", "mp4", "yuv420p", 35),
    ("h264", "422p10", "mp4", "yuv420p10le", 35),  # delivery H.264 stays 4:2:0 (10-bit kept), as before
    ("h265", "420p8", "mp4", "yuv420p", 35),
    ("h265", "422p10", "mp4", "yuv422p10le", 35),  # Main 4:2:2 10
    # lossless
    ("ffv1", "420p8", "mkv", "yuv420p", 45),
    ("ffv1", "422p10", "mkv", "yuv422p10le", 60),
    ("prores", "420p8", "mov", "yuv422p10le", 38),  # ProRes 422 HQ is 4:2:2 10-bit whatever the source
    ("prores", "422p10", "mov", "yuv422p10le", 38),
]


@pytest.mark.parametrize("codec, source, container, pix_fmt, least_db", CASES)
def test_each_codec_decodes_to_the_restored_frames(sources, tmp_path, codec, source, container, pix_fmt, least_db):
    info, timestamps, restored = _restored(sources[source])
    assert choose_container(info, codec) == container
    out = tmp_path / f"out.{container}"
    write_video(sources[source], iter(restored), out, info, timestamps, output_format=OutputFormat(codec=codec))

    with av.open(str(out)) as f:
        video = f.streams.video[0]
        assert video.codec_context.codec.name in {"h264": ("h264",), "h265": ("hevc",), "ffv1": ("ffv1",),
                                                   "prores": ("prores",)}[codec]
        assert video.codec_context.pix_fmt == pix_fmt
        assert len(f.streams.audio) == len(info.audio)  # the source's streams come along
        if codec == "prores":
            assert video.codec_context.profile == "HQ"
    decoded = read_frames(out, 0, FRAMES)
    assert decoded.dtype == (np.uint16 if "10" in pix_fmt else np.uint8)  # 10 bits read back deep
    db = psnr(luma(decoded), luma(restored))
    assert db >= least_db, f"{codec} from {source}: {db:.1f} dB"


def test_ffv1_masters_carry_a_crc_per_slice():
    encoding = picture_encoding(OutputFormat(codec="ffv1"), "yuv422p10le", deep=True, alpha=False)
    assert encoding.options["slicecrc"] == "1" and encoding.options["level"] == "3"


def test_the_default_is_the_former_encoding():
    """Default settings must encode as every output before formats could be chosen (the settings key
    keeps its former value, so the picture must too)."""
    assert picture_encoding(OutputFormat(), "yuv422p", deep=False, alpha=False).pix_fmt == "yuv420p"
    assert picture_encoding(OutputFormat(), "yuv422p10le", deep=True, alpha=False).options == {
        "crf": "16", "preset": "medium"}


def test_bad_formats_say_what_to_choose():
    with pytest.raises(ValueError, match="choose one of h264, h265, ffv1, prores"):
        OutputFormat(codec="vp9")
    with pytest.raises(ValueError, match="ProRes profile"):
        OutputFormat(codec="prores", prores_profile="ultra")
