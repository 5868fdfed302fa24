"""The formats real archives hold (issue 12), each as a small synthesized sample: every stream kept
(audio the output container cannot carry becomes FLAC), interlaced sources deinterlaced without
combing, hostile and awkward files failed with a reason."""

from __future__ import annotations

import re
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from formats import CONTAINERS, header_only, moving_bar, small_test_pattern, telecined, truncated, woven, write
from helpers import assert_same_timing, claim_all, decode_all, restore_run
from pipelines.listing import SourceFile
from pipelines.media.diagnose import diagnose
from pipelines.media.frames import read_frames
from pipelines.media.interlace import OPTIONS, choose, decode_start_pts, deinterlace, picture_timeline, read_pictures
from pipelines.media.output_container import choose_container, transcoded_audio
from pipelines.media.output_format import OutputFormat
from pipelines.media.probe import probe_timestamps
from pipelines.media.video_info import BadVideo, check_restorable
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.faults import TimeLimit, unreadable
from pipelines.restore.lease import Leases
from pipelines.restore.plan_stage import plan_video
from pipelines.restore.restore_stage import RestoreWindows
from pipelines.restore.rows import (DEINTERLACE, DEINTERLACED, FIELD_ORDER, FINGERPRINT, FRAMES, INTERLACING, OUTPUT,
                                    OUTPUT_STEM, PROMPT, REL, SOURCE, STAGING, STATUS, VIDEO_ID, video_id)
from test_assembly import restore_video, stream_packets


def bars(count: int = 10, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.stack([moving_bar(i, size) for i in range(count)])


def decoded_audio(path: Path | str, index: int = 0) -> np.ndarray:
    """Every sample of audio track `index`, as float64 in [-1, 1], `(channels, samples)`."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[index]
        chunks = []
        for frame in container.decode(stream):
            samples = frame.to_ndarray().astype(np.float64)
            if frame.format.name.startswith("s16"):
                samples /= 2**15
            elif frame.format.name.startswith("s32"):
                samples /= 2**31
            chunks.append(samples.reshape(len(frame.layout.channels), -1) if frame.format.is_planar
                          else samples.reshape(-1, len(frame.layout.channels)).T)
    return np.concatenate(chunks, axis=1)


# -- every stream kept -----------------------------------------------------------------------------

OLD_AUDIO = {  # name -> (video codec, container, pix_fmt, audio codec, sample rate)
    "wmv_wma.wmv": ("wmv2", "asf", "yuv420p", "wmav2", 22050),
    "flv_nellymoser.flv": ("flv", "flv", "yuv420p", "nellymoser", 22050),
    "avi_adpcm.avi": ("mpeg4", "avi", "yuv420p", "adpcm_ima_wav", 22050),
    "prores_pcm24.mov": ("prores_ks", "mov", "yuv422p10le", "pcm_s24be", 48000),
}


@pytest.mark.parametrize("name", sorted(OLD_AUDIO))
def test_audio_no_output_container_carries_becomes_flac(tmp_path, name):
    """Neither MP4 nor Matroska carries WMA, Nellymoser, IMA ADPCM or big-endian 24-bit PCM: the
    picture restores, and the sound comes out as FLAC holding the samples the source decodes to."""
    video_codec, fmt, pix_fmt, audio_codec, rate = OLD_AUDIO[name]
    src = write(tmp_path / name, bars(), codec=video_codec, fmt=fmt, pix_fmt=pix_fmt,
                audio=((audio_codec, rate, "eng", {}),))
    info, timestamps = probe_timestamps(src)
    assert [s.codec for s in info.audio] == [audio_codec]
    assert choose_container(info) == "mkv" and transcoded_audio(info, "mkv") == {info.audio[0].index}

    out = tmp_path / "out.mkv"
    restore_video(src, out, tmp_path / "stage", window=4, overlap=1)
    assert_same_timing(out, info, timestamps)
    with av.open(str(out)) as container:
        (audio,) = container.streams.audio
        assert (audio.codec_context.name, audio.codec_context.sample_rate) == ("flac", rate)
    before, after = decoded_audio(src), decoded_audio(out)
    assert before.shape == after.shape and before.shape[1] >= rate // 3
    # Lossless: FLAC at 24 bits keeps the decoded samples to within 24-bit quantisation.
    assert np.abs(before - after).max() < 2**-22


def test_wmv_whose_wma_decoder_holds_back_its_last_frame_assembles(tmp_path):
    """A second of WMV (wmv2 + wmav2): the WMA decoder gives up its last frame at the flush without a
    pts, which FLAC encoded into packets without timestamps (issue 25: TypeError or EINVAL in assembly).
    It is placed where the frame before it ends: every sample comes out, in time."""
    src = write(tmp_path / "old.wmv", bars(25), codec="wmv2", fmt="asf", audio=(("wmav2", 22050, "eng", {}),))
    out = tmp_path / "out.mkv"
    info, timestamps, _ = restore_video(src, out, tmp_path / "stage", window=8, overlap=2)
    assert_same_timing(out, info, timestamps)
    before, after = decoded_audio(src), decoded_audio(out)
    assert before.shape == after.shape and np.abs(before - after).max() < 2**-22
    with av.open(str(out)) as container:
        packets = [p for p in container.demux(container.streams.audio[0]) if p.size]
        starts = [p.pts for p in packets]
        assert None not in starts and starts == sorted(starts)
        played = (packets[-1].pts + packets[-1].duration - packets[0].pts) * packets[0].time_base
        assert abs(played - Fraction(after.shape[1], 22050)) < Fraction(1, 20)  # the track lasts as its samples


def test_matroska_with_two_audio_tracks_subtitles_chapters_and_a_font(tmp_path):
    src = write(tmp_path / "film.mkv", bars(12), codec="libx264",
                audio=(("pcm_s16le", 48000, "eng", {}), ("mp2", 44100, "fra", {"title": "commentary"})),
                subtitles=((0, 200, b"Hallo", "deu"), (240, 160, b"Tschuess", "deu")), chapters=2,
                attachment=b"\x00\x01font bytes")
    info, timestamps = probe_timestamps(src)
    assert choose_container(info) == "mkv" and not transcoded_audio(info, "mkv")
    out = tmp_path / "out.mkv"
    restore_video(src, out, tmp_path / "stage", window=4, overlap=1)
    assert_same_timing(out, info, timestamps)

    def streams(path: Path) -> list[tuple]:
        with av.open(str(path)) as container:
            return [(s.type, s.language, s.metadata.get("title"), int(s.disposition),
                     s.codec_context.name if s.codec_context else s.name) for s in container.streams
                    if s.type != "video"]

    assert streams(out) == streams(src)
    assert [x[4] for x in streams(out)] == ["pcm_s16le", "mp2", "srt", "font.ttf"]  # decoder names
    assert streams(out)[1][2:4] == ("commentary", int(av.stream.Disposition.comment))
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert b.chapters() == a.chapters() and len(a.chapters()) == 2
        assert bytes(b.streams.attachments[0].data) == b"\x00\x01font bytes"
        for i in range(2):  # copied packet for packet
            assert ([bytes(p) for p in b.demux(b.streams.audio[i]) if p.size]
                    == [bytes(p) for p in a.demux(a.streams.audio[i]) if p.size])
    assert stream_packets(out, "subtitles") == stream_packets(src, "subtitles")


# -- interlaced sources ----------------------------------------------------------------------------


def combing(frames_fhwc: np.ndarray) -> float:
    """Mean distance of each row from the average of its neighbours: what weaving two fields of a
    moving picture into one frame adds (every other row belongs to another moment)."""
    x = frames_fhwc.astype(np.float64).mean(axis=-1)  # (F, H, W)
    return float(np.abs(x[:, 1:-1] - (x[:, :-2] + x[:, 2:]) / 2).mean())


INTERLACED = {  # name -> (codec, container, options, setfield order, expected field order, size)
    "tape.mpg": ("mpeg2video", "mpeg", {"flags": "+ildct+ilme"}, "tff", "tff", (64, 48)),
    "broadcast.ts": ("libx264", "mpegts", {"x264-params": "interlaced=1:tff=1"}, "tff", "tff", (64, 48)),
    "camcorder.avi": ("dvvideo", "avi", {}, None, "bff", (720, 576)),  # DV: flagged, order unstated
    "capture.avi": ("mpeg4", "avi", {}, None, "tff", (64, 48)),  # nothing flagged: idet decides
}


@pytest.mark.parametrize("name", sorted(INTERLACED))
def test_field_order_is_found(tmp_path, name):
    codec, fmt, options, flag, expected, size = INTERLACED[name]
    src = write(tmp_path / name, woven(8, size, top_first=expected == "tff"), codec=codec, fmt=fmt,
                options=options, field_order=flag)
    info = probe_timestamps(src)[0]
    assert info.field_order == expected and info.interlacing.startswith(f"{expected}: "), info.interlacing
    # DV flags every frame interlaced: the pictures say a progressive one is not
    progressive = write(tmp_path / f"progressive_{name}", bars(8, size), codec=codec, fmt=fmt)
    assert probe_timestamps(progressive)[0].field_order == "progressive"


def test_pictures_overrule_idet_and_flags_on_progressive_sources(tmp_path):
    """Two signals must agree: a small progressive test pattern that idet calls top field first (fine
    vertical detail, next to no motion) stays progressive, and a progressive capture flagged
    interlaced (MPEG-2 coded with interlaced tools, setfield tff) is found progressive on its pictures."""
    pattern = small_test_pattern(24)
    for codec, fmt, ext in (("mpeg4", "avi", "avi"), ("wmv2", "asf", "wmv"), ("msmpeg4v3", "avi", "avi")):
        info = probe_timestamps(write(tmp_path / f"pattern_{codec}.{ext}", pattern, codec=codec, fmt=fmt))[0]
        assert info.field_order == "progressive", info.interlacing
        assert "stream flags none, idet tff" in info.interlacing and "pictures cannot tell" in info.interlacing
    flagged = write(tmp_path / "flagged.mpg", bars(12), codec="mpeg2video", fmt="mpeg",
                    options={"flags": "+ildct+ilme"}, field_order="tff")
    info = probe_timestamps(flagged)[0]
    assert info.field_order == "progressive", info.interlacing
    assert re.search(r"stream flags tff .*pictures progressive \(field-order asymmetry [+-]0\.0\d", info.interlacing)
    # the same pictures woven from fields: the measure says which field comes first, at about 0.7
    for top_first, sign in ((True, "+"), (False, "-")):
        woven_clip = write(tmp_path / f"woven_{top_first}.avi", woven(12, top_first=top_first), codec="mpeg4", fmt="avi")
        info = probe_timestamps(woven_clip)[0]
        assert info.field_order == ("tff" if top_first else "bff"), info.interlacing
        assert re.search(rf"pictures [tb]ff \(field-order asymmetry \{sign}0\.[6-8]", info.interlacing), info.interlacing


def test_bwdif_removes_the_combing_and_doubles_the_rate(tmp_path):
    frames = woven(6)
    truth = np.stack([moving_bar(i) for i in range(12)])  # the 50p pictures the fields came from
    pictures = deinterlace(frames, "tff", "field")
    assert pictures.shape == (12, 48, 64, 3)
    assert combing(frames) > 10 * combing(truth)
    assert combing(pictures) < 2 * combing(truth)
    # Each picture shows its own moment: the bar where the 50p picture had it.
    assert np.abs(pictures.astype(int) - truth).mean() < 0.2 * np.abs(frames.repeat(2, 0).astype(int) - truth).mean()
    assert deinterlace(frames, "tff", "frame").shape == (6, 48, 64, 3)


def test_telecined_film_is_found_and_put_back_together_not_deinterlaced(tmp_path):
    frames = telecined(16)  # 20 frames of 30i from 16 film frames
    src = write(tmp_path / "film.mpg", frames, codec="mpeg2video", fmt="mpeg", rate=30,
                options={"flags": "+ildct+ilme"}, field_order="tff")
    info = probe_timestamps(src)[0]
    assert (info.field_order, info.telecine) == ("tff", True)
    video = write(tmp_path / "video.mpg", woven(20), codec="mpeg2video", fmt="mpeg", rate=30,
                  options={"flags": "+ildct+ilme"}, field_order="tff")
    assert probe_timestamps(video)[0].telecine is False  # interlaced video repeats no field

    film = np.stack([moving_bar(2 * i) for i in range(16)])
    matched = deinterlace(frames, "tff", "film")
    assert matched.shape == frames.shape  # one picture per frame: the source's timeline
    assert combing(frames) > 3 * combing(film)
    assert combing(matched) < 1.2 * combing(film)
    # every picture is one of the film frames, whole (not a blend of two moments, as bwdif would make)
    nearest = [min(np.abs(p.astype(int) - f).mean() for f in film) for p in matched]
    assert max(nearest) < 2.0, nearest
    rows = plan_video({"source": str(src), "rel": "film.mpg", "fingerprint": "1:1", "video_id": "v",
                       "output_stem": str(tmp_path / "film"), "staging": ""}, window=8, overlap=2, detector="content")
    assert {(r["deinterlace"], r["frames"]) for r in rows} == {("film", 20)}


def test_deinterlace_option_decides_over_what_probing_found(tmp_path):
    """--deinterlace auto keeps what probing found (interlaced video at field rate), off trusts every
    source as progressive, field and frame deinterlace every source at that rate; the evidence says so."""
    tape = write(tmp_path / "tape.mpg", woven(8), codec="mpeg2video", fmt="mpeg", options={"flags": "+ildct+ilme"},
                 field_order="tff")
    clip = write(tmp_path / "clip.avi", bars(8), codec="mpeg4", fmt="avi")
    row = {SOURCE: str(tape), REL: "tape.mpg", FINGERPRINT: "1:1", VIDEO_ID: "v", OUTPUT_STEM: str(tmp_path / "o"),
           STAGING: ""}
    planned = {}
    for source in (tape, clip):
        for option in OPTIONS:
            (first, *_) = plan_video({**row, SOURCE: str(source)}, window=8, overlap=2, detector="content",
                                     deinterlace=option)
            planned[source.name, option] = (first[DEINTERLACE], first[FIELD_ORDER], first[FRAMES])
            assert first[INTERLACING].endswith("" if option == "auto" else f"--deinterlace {option}: {first[FIELD_ORDER]}")
    assert planned == {("tape.mpg", "auto"): ("field", "tff", 16), ("tape.mpg", "off"): ("", "progressive", 8),
                       ("tape.mpg", "field"): ("field", "tff", 16), ("tape.mpg", "frame"): ("frame", "tff", 8),
                       ("clip.avi", "auto"): ("", "progressive", 8), ("clip.avi", "off"): ("", "progressive", 8),
                       ("clip.avi", "field"): ("field", "tff", 16), ("clip.avi", "frame"): ("frame", "tff", 8)}
    info = probe_timestamps(tape)[0]
    assert choose(info, "auto") == (info, "field")


def test_picture_timeline_keeps_duration_and_windows_join(tmp_path):
    src = write(tmp_path / "tape.mpg", woven(9), codec="mpeg2video", fmt="mpeg", options={"flags": "+ildct+ilme"},
                field_order="tff")
    info, timestamps = probe_timestamps(src)
    pictures, picture_ts = picture_timeline(info, timestamps, "field")
    assert pictures.frame_count == 18 and pictures.fps == 2 * info.fps and pictures.duration == info.duration
    assert list(picture_ts[:3] * pictures.time_base) == [timestamps[0] * info.time_base,
                                                          (timestamps[0] + Fraction(1800)) * info.time_base,
                                                          timestamps[1] * info.time_base]
    whole = read_pictures(src, 0, 18, start_pts=decode_start_pts(0, 18, timestamps, "field"), mode="field",
                          field_order="tff", pictures=18)
    for start, end in ((0, 5), (5, 11), (11, 18)):  # windows decode their neighbours: no seam
        part = read_pictures(src, start, end, start_pts=decode_start_pts(start, end, timestamps, "field"),
                             mode="field", field_order="tff", pictures=18)
        assert np.array_equal(part, whole[start:end])


def test_interlaced_tape_restores_progressive_at_field_rate_without_combing(tmp_path):
    """The restore job's stages on one interlaced MPEG-2 capture, with the shipped nano model: 6
    frames of 25i come out as 12 pictures of 50p, the audio kept, and the output has no combing left
    (measured at the source's geometry); the ledger row says what was done."""
    (tmp_path / "in").mkdir()
    src = write(tmp_path / "in" / "tape.mpg", woven(6), codec="mpeg2video", fmt="mpeg",
                options={"flags": "+ildct+ilme"}, field_order="tff", audio=(("mp2", 48000, "eng", {}),))
    info, timestamps = probe_timestamps(src)
    run = restore_run(tmp_path / "out")
    row = {SOURCE: str(src), REL: "tape.mpg", FINGERPRINT: "f", VIDEO_ID: video_id(str(src)),
           OUTPUT_STEM: run.layout.output_stem("tape"), STAGING: run.staging_folder(str(src), "f"), PROMPT: ""}
    windows = plan_video(row, window=8, overlap=2, detector="content", scale=2)
    assert {w[DEINTERLACE] for w in windows} == {"field"} and windows[0][FRAMES] == 12 and len(windows) == 2
    actor = RestoreWindows("nano", None, 2, None, "light_deg", run_id="test")
    with Leases(run) as leases:  # finish_video publishes only for the run holding the video
        assert claim_all(leases, [SourceFile(str(src), "tape.mpg", 1, "f")]).mine
        video = finish_video([actor.restore(w) for w in windows], run=run)
    assert (video[STATUS], video[DEINTERLACED], video[FRAMES]) == ("done", "bwdif, field rate, tff", 12)

    out = Path(video[OUTPUT])
    out_info, out_timestamps = probe_timestamps(out)
    assert (out_info.frame_count, out_info.fps, out_info.field_order) == (12, 50, "progressive")
    assert abs(out_info.duration - info.duration) <= Fraction(1, 1000)
    restored = np.stack(decode_all(out))  # (12, 96, 128, 3)
    at_source_size = restored.reshape(12, 48, 2, 64, 2, 3).mean(axis=(2, 4))
    source = np.stack(decode_all(src))
    assert combing(source) > 8.0
    assert combing(at_source_size) < 0.25 * combing(source)
    # MPEG audio copied packet for packet (MP4 tags layer II as MPEG-1 audio; it decodes the same)
    assert np.abs(decoded_audio(out) - decoded_audio(src)).max() < 1e-3


# -- hostile and awkward files ----------------------------------------------------------------------


@pytest.mark.parametrize("playlist", ["ffconcat version 1.0\nfile neighbour.mp4\n",
                                      "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nneighbour.mp4\n#EXT-X-ENDLIST\n"])
def test_a_playlist_named_mp4_is_refused_and_reads_nothing(tmp_path, playlist):
    write(tmp_path / "neighbour.mp4", bars(4), codec="libx264")
    (tmp_path / "clip.mp4").write_text(playlist)
    with pytest.raises(BadVideo, match="refused: the file is an FFmpeg concat playlist|not a recognised video"):
        probe_timestamps(tmp_path / "clip.mp4")


@pytest.mark.parametrize("name, codec, fmt", [("dv.avi", "mpeg4", "avi"), ("tape.mpg", "mpeg2video", "mpeg"),
                                              ("film.mkv", "libx264", "matroska"), ("old.wmv", "wmv2", "asf")])
def test_header_stubs_are_bad_inputs(tmp_path, name, codec, fmt):
    """The first 64 bytes of a file (an upload cut off at once): a BadVideo with a reason (permanent
    in the ledger), never another exception that the nightly run would retry for ever."""
    whole = write(tmp_path / name, bars(6), codec=codec, fmt=fmt).read_bytes()
    (tmp_path / f"stub_{name}").write_bytes(whole[:64])
    with pytest.raises(BadVideo):
        probe_timestamps(tmp_path / f"stub_{name}")


CUT_REASONS = {  # name -> (reason of the header-only copy, reason of the truncated copy)
    "film.mkv": (r"truncated Matroska/WebM file: the segment is \d+ bytes short",) * 2,
    "clip.mp4": ("truncated MP4/MOV file: no 'moov' index box",
                 r"truncated MP4/MOV file: box 'mdat' at byte \d+ needs \d+ bytes, only \d+ remain"),
    "master.mov": ("truncated MP4/MOV file: no 'moov' index box",
                   r"truncated MP4/MOV file: box 'mdat' at byte \d+ needs \d+ bytes, only \d+ remain"),
    "capture.avi": (r"truncated AVI file: the RIFF chunk is \d+ bytes short",) * 2,
    "tape.mpg": ("truncated MPEG-PS file: it holds its header and no video packet",
                 r"truncated MPEG-PS file: the packet at byte \d+ needs \d+ bytes, only \d+ remain"),
    "broadcast.ts": (r"truncated MPEG-TS file: it holds its tables \(PAT, PMT\) and no audio or video packet",
                     r"truncated MPEG-TS file: it ends \d+ bytes into a 188-byte packet"),
    "old.wmv": (r"truncated ASF \(WMV/WMA\) file: its header says \d+ bytes, \d+ are missing",) * 2,
}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_header_only_and_truncated_files_fail_for_good_saying_what_is_missing(tmp_path, name):
    """Each container's header alone and its first 60%: a permanent failed row whose reason says the
    file was cut off and how (never a partial restoration of what is left, never a retried error)."""
    codec, fmt, audio = CONTAINERS[name]
    whole = write(tmp_path / name, bars(12), codec=codec, fmt=fmt, audio=((audio, 48000, "eng", {}),)).read_bytes()
    assert probe_timestamps(tmp_path / name)[0].frame_count == 12  # the whole file is fine
    for cut, reason in zip((header_only(name, whole), truncated(whole)), CUT_REASONS[name]):
        (tmp_path / f"cut_{name}").write_bytes(cut)
        row = {SOURCE: str(tmp_path / f"cut_{name}"), REL: name, FINGERPRINT: "1:1", VIDEO_ID: "v",
               OUTPUT_STEM: str(tmp_path / "out"), STAGING: ""}
        (failed,) = plan_video(row, window=8, overlap=2, detector="content")
        assert (failed[STATUS], failed["permanent"]) == ("failed", True), failed
        assert re.match(reason, failed["error"]), failed["error"]


def test_stubs_that_raised_index_and_struct_errors_say_where_they_end(tmp_path):
    """A Matroska file cut inside its EBML header, an MP4 cut inside a box's 64-bit size, a transport
    stream cut between packets inside an audio PES packet (issue 25: IndexError, struct.error, or
    restored short without a word)."""
    cases = {"magic.mkv": (write(tmp_path / "a.mkv", bars(4), codec="libx264").read_bytes()[:4],
                           "truncated Matroska/WebM file: it ends inside the EBML header, after 4 bytes"),
             "large.mp4": (write(tmp_path / "a.mp4", bars(4), codec="libx264").read_bytes()[:32] + b"\0\0\0\1mdat\0\0",
                           "truncated MP4/MOV file: it ends inside the header of box 'mdat', after 42 bytes")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadVideo, match=re.escape(reason)):
            probe_timestamps(tmp_path / name)
    whole = write(tmp_path / "a.ts", bars(25), codec="mpeg2video", fmt="mpegts",
                  audio=(("mp2", 48000, "eng", {}),)).read_bytes()
    reasons = []
    for packets in range(len(whole) // 188 // 2, len(whole) // 188):  # cuts between packets, from half way
        (tmp_path / "cut.ts").write_bytes(whole[:188 * packets])
        with open(tmp_path / "cut.ts", "rb") as f:
            reasons.append(diagnose(f, 188 * packets)[1])
    assert any(r and re.match(r"truncated MPEG-TS file: the last packet of stream PID 0x\w+ lacks \d+ bytes", r)
               for r in reasons), reasons


def test_what_a_demuxer_raises_on_a_file_is_permanent_and_storage_errors_are_not():
    for error in (IndexError("index out of range"), struct.error("unpack requires a buffer of 8 bytes"),
                  av.error.InvalidDataError(1094995529, "Invalid data found when processing input"), OverflowError()):
        assert unreadable(error), error
    for error in (ConnectionResetError("store went away"), FileNotFoundError("gone"), TimeLimit("probing took long"),
                  MemoryError(), RuntimeError("a bug of ours")):
        assert not unreadable(error), error


def test_truncated_avi_says_so(tmp_path):
    whole = write(tmp_path / "a.avi", bars(6), codec="mpeg4", fmt="avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadVideo, match=r"truncated AVI file: the RIFF chunk is \d+ bytes short"):
        probe_timestamps(tmp_path / "cut.avi")


def test_frames_above_the_pixel_limit_fail_before_decoding(tmp_path):
    src = write(tmp_path / "big.mp4", bars(2, (128, 96)), codec="libx264")
    assert probe_timestamps(src, max_pixels=128 * 96)[0].width == 128
    with pytest.raises(BadVideo, match=r"frames of 128x96 \(12,288 pixels\) are above the limit of 12,287 pixels"):
        probe_timestamps(src, max_pixels=128 * 96 - 1)


def test_resolution_change_mid_stream_fails_with_a_reason(tmp_path):
    """Two broadcast recordings joined byte for byte (a 64x48 part, then a 48x32 one): each window
    across or after the change says so, whichever window meets it first."""
    first = write(tmp_path / "a.ts", bars(8, (64, 48)), codec="libx264", fmt="mpegts").read_bytes()
    second = write(tmp_path / "b.ts", bars(8, (48, 32)), codec="libx264", fmt="mpegts", first=10).read_bytes()
    (tmp_path / "joined.ts").write_bytes(first + second)
    for window, overlap in ((16, 4), (4, 1)):
        with pytest.raises(BadVideo, match=r"resolution changes mid-stream \(.*48x32.*\): not restored"):
            restore_video(tmp_path / "joined.ts", tmp_path / "out.mp4", tmp_path / "stage", window=window,
                          overlap=overlap)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("transfer, reason", [(16, r"HDR video \(PQ"), (18, r"HDR video \(HLG")])
def test_hdr_fails_with_a_reason(tmp_path, transfer, reason):
    src = write(tmp_path / "master.mov", bars(4), codec="libx265", fmt="mov", pix_fmt="yuv420p10le",
                options={"x265-params": "log-level=error"}, colour=(9, transfer, 9))
    with pytest.raises(BadVideo, match=reason):
        check_restorable(probe_timestamps(src)[0])


def test_alpha_is_carried_through_upscaled_plainly(tmp_path):
    """A ProRes 4444 master with a transparent left half and a soft edge: the restored picture comes
    out in FFV1 with an alpha plane, the source's alpha upscaled 2x (never dropped)."""
    alpha = np.zeros((4, 48, 64), np.uint8)
    alpha[:, :, 32:] = 255
    alpha[:, :, 28:32] = np.linspace(0, 255, 6)[1:5].astype(np.uint8)
    src = write(tmp_path / "logo.mov", bars(4), codec="prores_ks", fmt="mov", pix_fmt="yuva444p10le",
                options={"profile": "4"}, alpha=alpha)
    info, timestamps = probe_timestamps(src)
    check_restorable(info)
    assert choose_container(info) == "mkv"
    out = tmp_path / "out.mkv"
    restore_video(src, out, tmp_path / "stage", window=4, overlap=1)
    assert_same_timing(out, info, timestamps)
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt.startswith("yuva444p")
        planes = [f.to_ndarray(format="rgba64le")[..., 3] for f in container.decode(video=0)]
    assert len(planes) == 4 and planes[0].shape == (96, 128)
    upscaled = planes[0].astype(float) / 65535 * 255
    assert upscaled[:, :50].max() < 3 and upscaled[:, 70:].min() > 252  # transparent, then opaque
    assert 20 < upscaled[:, 58].mean() < 235  # the soft edge stays soft


def test_outputs_with_alpha_are_staged_losslessly(tmp_path):
    """An 8-bit source with alpha: its output is lossless FFV1, so its windows are staged in FFV1 too
    (`lossless`); one without alpha is staged in H.264 4:4:4 (write_segment)."""
    with_alpha = write(tmp_path / "logo.mkv", bars(4), codec="ffv1", fmt="matroska", pix_fmt="yuva420p",
                       alpha=np.full((4, 48, 64), 200, np.uint8))
    plain = write(tmp_path / "plain.mp4", bars(4), codec="libx264")
    for src, lossless in ((with_alpha, True), (plain, False)):
        rows = plan_video({"source": str(src), "rel": src.name, "fingerprint": "1:1", "video_id": "v",
                           "output_stem": str(tmp_path / src.stem), "staging": ""}, window=8, overlap=2,
                          detector="content")
        assert {(r["status"], r["lossless"]) for r in rows} == {("pending", lossless)}


# -- bit depth and colour ---------------------------------------------------------------------------


def test_ten_bit_source_is_restored_and_written_ten_bit_with_its_colour_tags(tmp_path):
    """A 10-bit HEVC master tagged BT.2020 (SDR): a gentle ramp of 64 8-bit levels holds 256 10-bit
    ones. Through 8 bits the output would keep about 64; it keeps about 256, is written 10-bit, and is
    tagged like the source."""
    ramp = np.linspace(100 * 257, 164 * 257, 256)  # (W,) on the 16-bit scale
    rgb48 = np.broadcast_to(ramp[None, :, None], (32, 256, 3)).astype(np.uint16)
    src = tmp_path / "master.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx265", rate=25)
        video.width, video.height, video.pix_fmt = 256, 32, "yuv420p10le"
        video.options = {"x265-params": "log-level=error:lossless=1"}
        cc = video.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = 9, 14, 9, 1
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(rgb48, format="rgb48le").reformat(
                format="yuv420p10le", dst_colorspace=9, dst_color_range=1)
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    info, _ = probe_timestamps(src)
    assert info.pix_fmt == "yuv420p10le"
    frames = read_frames(src, 0, 4)
    assert frames.dtype == np.uint16

    out = tmp_path / "out.mp4"
    restore_video(src, out, tmp_path / "stage", window=4, overlap=1, output_format=OutputFormat(crf=0))
    out_info, _ = probe_timestamps(out)
    assert out_info.pix_fmt == "yuv420p10le"
    assert (out_info.color_primaries, out_info.color_trc, out_info.colorspace) == (9, 14, 9)
    restored = read_frames(out, 0, 4)
    assert restored.dtype == np.uint16 and restored.shape == (4, 64, 512, 3)
    levels = len(np.unique(restored[0, 32, :, 1] >> 6))  # distinct 10-bit levels along a row
    assert levels > 200, levels
    assert np.abs(restored[0, 32, ::2, 1].astype(int) - frames[0, 16, :, 1]).mean() < 0.01 * 65535
