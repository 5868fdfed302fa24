"""The restore job (jobs/upscale_archive.py on a local Ray, bicubic preset) over a second archive of what
tape transfers and broadcast captures hold (issue 25): anamorphic SD, clocks that start at 10 hours,
lead with the audio, wrap or start mid-stream, and the timecode, tags, cover art, second programs and
data tracks beside the picture. Each output keeps its display aspect ratio, duration, pictures and
streams, or says in its ledger row what it could not carry."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from formats import cut, moving_bar, with_captions, with_streams, write
from helpers import latest_rows, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

BICUBIC = ("--preset", "bicubic", "--scale", "2")
BARS = np.stack([moving_bar(i) for i in range(60)])
SD = {  # rel -> (coded size, SAR, display aspect ratio)
    "dv/pal 16x9.dv": ((720, 576), Fraction(64, 45), Fraction(16, 9)),
    "dv/pal 4x3.dv": ((720, 576), Fraction(16, 15), Fraction(4, 3)),
    "dvd/ntsc 4x3.mpg": ((720, 480), Fraction(8, 9), Fraction(4, 3)),
    "dvd/ntsc 16x9.mpg": ((704, 480), Fraction(40, 33), Fraction(16, 9)),
    "web/cif.mp4": ((352, 288), Fraction(12, 11), Fraction(4, 3)),
}
CLOCKS = ("ts/10 hours.ts", "ts/audio lead.ts", "ts/wrap.ts", "ts/open gop.ts", "ts/intra refresh.ts")
TAGS = {"title": "Tagesschau", "comment": "Band 12, Seite B", "date": "1987", "archive_id": "NDR-1987-0412"}


def build(root: Path) -> Path:
    for folder in ("dv", "dvd", "web", "ts", "tracks"):
        (root / folder).mkdir(parents=True)
    for rel, ((width, height), sar, _) in SD.items():
        codec, fmt = {".dv": ("dvvideo", "dv"), ".mpg": ("mpeg2video", "mpeg"), ".mp4": ("libx264", "mp4")}[Path(rel).suffix]
        write(root / rel, BARS[:3], codec=codec, fmt=fmt, size=(width, height), sar=sar,
              rate=30 if "ntsc" in rel else 25)
    write(root / "web/rotated.mp4", BARS[:4], codec="libx264", fmt="mp4", sar=Fraction(4, 3))
    _rotate(root / "web/rotated.mp4")
    write(root / "web/logo alpha.webm", BARS[:4], codec="libvpx-vp9", fmt="webm", pix_fmt="yuva420p",
          alpha=np.full((4, 48, 64), 100, np.uint8))
    mp2 = (("mp2", 48000, "eng", {}),)
    write(root / "ts/10 hours.ts", BARS[:25], codec="mpeg2video", fmt="mpegts", first=10 * 3600 * 25,
          audio=mp2, audio_first=10 * 3600)
    write(root / "ts/audio lead.ts", BARS[:25], codec="mpeg2video", fmt="mpegts", first=35, audio=mp2)
    write(root / "ts/wrap.ts", BARS[:50], codec="mpeg2video", fmt="mpegts", first=2**33 // 3600 - 25)  # wraps at 25
    cut(write(root / "ts/open gop.ts", BARS, codec="mpeg2video", fmt="mpegts", options={"g": "12", "bf": "2"},
              audio=mp2), 0.4)
    cut(write(root / "ts/intra refresh.ts", BARS, codec="libx264", fmt="mpegts", audio=mp2,
              options={"x264-params": "intra-refresh=1:keyint=12:bframes=0"}), 0.4)
    write(root / "tracks/tape.mov", BARS[:6], codec="libx264", fmt="mov", tags=TAGS,  # MOV keeps all but archive_id
          video_tags={"timecode": "10:00:00:00"}, audio=(("aac", 48000, "deu", {}),))
    write(root / "tracks/tagged.mkv", BARS[:6], codec="libx264", fmt="matroska", tags=TAGS)
    jpeg = BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(jpeg, format="JPEG")
    with_streams(root / "tracks/cover.mp4", BARS[:6], fmt="mp4", cover=jpeg.getvalue())
    with_streams(root / "tracks/two tracks.mkv", BARS[:6], fmt="matroska", second_video="mpeg2video")
    with_streams(root / "tracks/two programs.ts", BARS[:6], fmt="mpegts", codec="mpeg2video", second_video="mpeg2video")
    with_captions(root / "tracks/captions.ts", BARS[:60], "HELLO")
    with_streams(root / "tracks/teletext klv.ts", BARS[:6], fmt="mpegts", codec="mpeg2video", teletext=True, klv=True)
    return root


def _rotate(path: Path) -> None:
    """Remux `path` with a display matrix turning it a quarter (how phones record portrait)."""
    rotated = path.with_suffix(".tmp.mp4")
    with av.open(str(path)) as src, av.open(str(rotated), "w", format="mp4") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        stream.set_display_rotation(90)
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    rotated.replace(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    archive = build(tmp_path_factory.mktemp("tracks"))
    output = tmp_path_factory.mktemp("restored")
    return archive, output, run_job(archive, output, *BICUBIC)


def _video(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        decoded = list(c.decode(v))
        pictures = [f.to_ndarray(format="gray").astype(np.float32) for f in decoded]
        audio = c.streams.audio[0] if c.streams.audio else None
        return {"size": (v.codec_context.width, v.codec_context.height), "sar": v.sample_aspect_ratio or Fraction(1),
                "duration": c.duration / 1e6, "start": c.start_time / 1e6, "pictures": pictures,
                "video_start": float(decoded[0].time),  # the first picture shown (not a leading B-frame's pts)
                "audio_start": float(audio.start_time * audio.time_base) if audio else None,
                "tags": dict(c.metadata), "video_tags": dict(v.metadata),
                "streams": [(s.type, s.codec_context.width if s.type == "video" else None,
                             bool(s.disposition & av.stream.Disposition.attached_pic)) for s in c.streams]}


def test_the_run_reaches_its_end_and_restores_every_case(run):
    archive, output, result = run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = latest_rows(output)
    assert {rel: row["status"] for rel, row in rows.items()} == dict.fromkeys(rows, "done") and len(rows) == 19


def test_anamorphic_sources_keep_their_display_aspect_ratio(run):
    archive, output, _ = run
    rows = latest_rows(output)
    for rel, ((width, height), sar, dar) in SD.items():
        out = _video(Path(rows[rel]["output"]))
        assert out["size"][1] == 2 * height and out["sar"] == sar, (rel, out["size"], out["sar"])
        assert abs(float(Fraction(out["size"][0], out["size"][1]) * out["sar"]) - float(dar)) < 0.01, rel
        assert rows[rel]["sar"] == f"{sar.numerator}:{sar.denominator}"
    rotated = _video(Path(rows["web/rotated.mp4"]["output"]))  # upright 48x64 -> 96x128 pixels 3:4 wide
    assert rotated["size"] == (96, 128) and rotated["sar"] == Fraction(3, 4) and rows["web/rotated.mp4"]["sar"] == "3:4"


def test_vp9_alpha_is_decoded_and_kept(run):
    _, output, _ = run
    row = latest_rows(output)["web/logo alpha.webm"]
    with av.open(row["output"]) as c:  # FFV1 with the alpha plane, in Matroska
        frame = next(c.decode(video=0))
        assert (c.streams.video[0].codec_context.codec.name, frame.format.name) == ("ffv1", "yuva444p")
        assert abs(frame.to_ndarray(format="rgba")[..., 3].mean() - 100) < 3


def test_square_pixels_resamples_at_the_output_height(tmp_path):
    archive = tmp_path / "in"
    archive.mkdir()
    write(archive / "pal 16x9.dv", BARS[:2], codec="dvvideo", fmt="dv", size=(720, 576), sar=Fraction(64, 45))
    result = run_job(archive, tmp_path / "out", *BICUBIC, "--square-pixels", "--deinterlace", "frame")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = latest_rows(tmp_path / "out")["pal 16x9.dv"]
    out = _video(Path(row["output"]))
    assert out["size"] == (2048, 1152) and out["sar"] == 1 and row["sar"] == "1:1"  # 1440 * 64/45 = 2048


def test_every_clock_plays_from_zero_for_the_source_duration_with_the_source_pictures(run):
    archive, output, _ = run
    rows = latest_rows(output)
    for rel in CLOCKS:
        src, out = _video(archive / rel), _video(Path(rows[rel]["output"]))
        assert out["start"] == pytest.approx(0, abs=1e-3), (rel, out["start"])
        assert out["duration"] == pytest.approx(src["duration"], abs=1 / 25), (rel, src["duration"], out["duration"])
        # the pictures the source shows, each at its time (a 2x bicubic of it, halved again)
        assert len(out["pictures"]) == len(src["pictures"]) > 20, rel
        for a, b in zip(src["pictures"], out["pictures"]):
            assert np.abs(b.reshape(48, 2, 64, 2).mean((1, 3)) - a).mean() < 6, rel
        if src["audio_start"] is not None:  # the picture's lead or lag over the sound is kept
            lag, kept = src["video_start"] - src["audio_start"], out["video_start"] - out["audio_start"]
            assert kept == pytest.approx(lag, abs=0.002), (rel, lag, kept)


def test_timecode_tags_cover_art_and_second_videos_are_kept(run):
    archive, output, _ = run
    rows = latest_rows(output)
    tape = _video(Path(rows["tracks/tape.mov"]["output"]))
    assert {k: tape["tags"].get(k) for k in TAGS} == TAGS | {"archive_id": None}
    assert tape["video_tags"]["timecode"] == "10:00:00:00"
    tagged = _video(Path(rows["tracks/tagged.mkv"]["output"]))  # MP4 (mdta keys) from Matroska: every tag
    assert rows["tracks/tagged.mkv"]["output"].endswith(".mp4")
    assert {k.lower(): v for k, v in tagged["tags"].items() if k.lower() in TAGS} == TAGS
    assert "timecode (10:00:00:00) comes from it" in rows["tracks/tape.mov"]["notes"]
    cover = _video(Path(rows["tracks/cover.mp4"]["output"]))
    assert cover["streams"] == [("video", 128, False), ("video", 32, True)]
    for rel in ("tracks/two tracks.mkv", "tracks/two programs.ts"):
        out = _video(Path(rows[rel]["output"]))
        assert out["streams"] == [("video", 128, False), ("video", 32, False)], rel
        assert rows[rel]["notes"] == "video stream #1 (mpeg2video) copied unchanged, not restored: only the first " \
                                     "video stream is"
    dv = _video(Path(rows["dv/pal 16x9.dv"]["output"]))
    assert dv["video_tags"]["timecode"] == "00:00:00:00"  # DV's timecode is the output's


def test_closed_captions_in_the_picture_become_a_subtitle_track_a_player_lists(run):
    _, output, _ = run
    with av.open(latest_rows(output)["tracks/captions.ts"]["output"]) as c:
        text = c.streams.subtitles[0]
        assert text.codec_context.codec.name == "mov_text"
        shown = [(float(p.pts * p.time_base), float(p.duration * p.time_base), sub.ass)
                 for p in c.demux(text) for sub in text.decode(p)]
    # on screen from picture 7 to picture 39 at 30000/1001 (the output's clock starts with the picture)
    assert shown == [(pytest.approx(7 * 1001 / 30000, abs=0.002), pytest.approx(32 * 1001 / 30000, abs=0.002),
                      b"0,0,Default,,0,0,0,,HELLO")]


def test_streams_no_container_carries_are_notes_not_crashes(run):
    _, output, _ = run
    row = latest_rows(output)["tracks/teletext klv.ts"]
    assert row["status"] == "done"
    assert row["notes"] == ("subtitle stream #1 (a codec FFmpeg cannot decode, deu) not carried: MP4 has no place for "
                            "it; data stream #2 (a codec FFmpeg cannot decode) not carried: MP4 has no place for it")
