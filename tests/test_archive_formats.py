"""The restore job (jobs/upscale_archive.py on a local Ray, TINY model) over an archive of the formats
and names real archives hold (issue 12): old containers and audio codecs, an interlaced tape, a
Matroska film with every kind of stream, Unicode, brackets and names as long as the filesystem
allows, folders named like the job's own, hidden files, and the files that must fail with a reason."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from formats import CONTAINERS, header_only, moving_bar, small_test_pattern, truncated, woven, write
from helpers import latest_rows, read_summary, run_job
from pipelines.media.probe import probe_timestamps
from test_formats import CUT_REASONS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LONG = ("Ein sehr langer Titel einer Sendung [1987] (VHS) " * 5).encode()[:250].decode(errors="ignore").strip()
GOOD = {  # rel -> (output rel, audio codecs in the output, deinterlaced)
    "Ünïcødé film [1987] (VHS).wmv": ("Ünïcødé film [1987] (VHS).mkv", ["flac"], ""),
    "_staging/tape.mpg": ("_staging/tape.mp4", ["mp3"], "bwdif, field rate, tff"),  # MP4 calls mp2 mp3
    "_ledger/film.mkv": ("_ledger/film.mkv", ["pcm_s16le", "mp2"], ""),
    f"long/{LONG}.avi": (f"long/{LONG}.mkv", ["flac"], ""),
    "masters/logo alpha.mov": ("masters/logo alpha.mkv", [], ""),  # FFV1 with the alpha plane
}
BAD = {  # rel -> reason in the ledger
    "bad/hdr.mov": r"HDR video \(PQ",
    "bad/playlist.mp4": "refused: the file is an FFmpeg concat playlist",
    "bad/stub.avi": "truncated AVI file",
}


def build(root: Path) -> Path:
    for folder in ("_staging", "_ledger", "long", "bad"):
        (root / folder).mkdir(parents=True)
    bars = np.stack([moving_bar(i) for i in range(8)])
    write(root / "Ünïcødé film [1987] (VHS).wmv", bars, codec="wmv2", fmt="asf",
          audio=(("wmav2", 22050, "eng", {}),))
    write(root / "_staging/tape.mpg", woven(5), codec="mpeg2video", fmt="mpeg", options={"flags": "+ildct+ilme"},
          field_order="tff", audio=(("mp2", 48000, "eng", {}),))
    write(root / "_ledger/film.mkv", bars, codec="libx264",
          audio=(("pcm_s16le", 48000, "eng", {}), ("mp2", 44100, "fra", {"title": "commentary"})),
          subtitles=((0, 200, b"Hallo", "deu"),), chapters=2, attachment=b"font")
    write(root / f"long/{LONG}.avi", bars[:6], codec="mpeg4", fmt="avi", audio=(("adpcm_ima_wav", 22050, "eng", {}),))
    (root / "masters").mkdir()
    write(root / "masters/logo alpha.mov", bars[:3], codec="prores_ks", fmt="mov", pix_fmt="yuva444p10le",
          options={"profile": "4"}, alpha=np.full((3, 48, 64), 200, np.uint8))
    write(root / "bad/hdr.mov", bars[:3], codec="libx265", fmt="mov", pix_fmt="yuv420p10le",
          options={"x265-params": "log-level=error"}, colour=(9, 16, 9))
    write(root / "bad/neighbour.mkv", bars[:3], codec="libx264")  # what the playlist would read
    (root / "bad/playlist.mp4").write_text("ffconcat version 1.0\nfile neighbour.mkv\n")
    whole = write(root / "bad/whole.avi", bars[:4], codec="mpeg4", fmt="avi").read_bytes()
    (root / "bad/stub.avi").write_bytes(whole[:200])
    (root / "bad/whole.avi").unlink()
    (root / ".hidden.mp4").write_bytes(b"x")
    (root / "._Ünïcødé film [1987] (VHS).wmv").write_bytes(b"macOS resource fork")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    archive = build(tmp_path_factory.mktemp("formats"))
    output = tmp_path_factory.mktemp("restored")
    return archive, output, run_job(archive, output)


def test_every_format_restores_under_its_own_name_with_every_stream(run):
    archive, output, result = run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = latest_rows(output)
    for rel, (out_rel, audio, deinterlaced) in GOOD.items():
        row = rows[rel]
        assert (row["status"], row["output"], row["deinterlaced"]) == ("done", str(output / out_rel), deinterlaced), row
        with av.open(str(output / out_rel)) as container, av.open(str(archive / rel)) as source:
            assert [s.codec_context.codec.canonical_name for s in container.streams.audio] == audio
            # languages where the source container has them (AVI and MPEG-PS have none; MP4 says "und")
            languages = [s.language for s in container.streams.audio]
            assert [None if x == "und" else x for x in languages] == [s.language for s in source.streams.audio]
    tape_info, _ = probe_timestamps(archive / "_staging/tape.mpg")
    out_info, _ = probe_timestamps(output / "_staging/tape.mp4")
    assert (out_info.frame_count, out_info.fps, out_info.field_order) == (10, 2 * tape_info.fps, "progressive")
    with av.open(str(output / "_ledger/film.mkv")) as film:
        assert [s.type for s in film.streams] == ["video", "audio", "audio", "subtitle", "attachment"]
        assert len(film.chapters()) == 2 and film.streams.audio[1].metadata["title"] == "commentary"


def test_bad_inputs_fail_with_reasons_and_hidden_files_are_counted(run):
    archive, output, _ = run
    rows = latest_rows(output)
    assert set(rows) == set(GOOD) | set(BAD) | {"bad/neighbour.mkv"}
    for rel, reason in BAD.items():
        assert rows[rel]["status"] == "failed" and rows[rel]["permanent"], rows[rel]
        assert re.search(reason, rows[rel]["error"]), rows[rel]["error"]
    summary = read_summary(output)
    assert (summary["skipped_hidden"], summary["done"], summary["failed"]) == (2, len(GOOD) + 1, len(BAD))
    # The user's _staging and _ledger folders were restored, and the job's own staging is gone.
    assert not list((output / "_staging").glob("*/*/window_*.mkv"))


# -- the old ones (issue 25): a WMV, cut-off files of each container, progressive patterns idet misjudges ---

BICUBIC = ("--preset", "bicubic", "--scale", "2")
PATTERNS = {"patterns/pattern mpeg4.avi": ("mpeg4", "avi"), "patterns/pattern wmv2.wmv": ("wmv2", "asf"),
            "patterns/pattern msmpeg4v3.avi": ("msmpeg4v3", "avi")}


def build_old(root: Path) -> Path:
    """A second of WMV, a progressive test pattern through each old codec, an interlaced tape, and a
    header-only and a truncated copy of a sample of each container (`cut/header <name>`, `cut/truncated <name>`)."""
    for folder in ("patterns", "cut"):
        (root / folder).mkdir(parents=True)
    write(root / "old.wmv", np.stack([moving_bar(i) for i in range(25)]), codec="wmv2", fmt="asf",
          audio=(("wmav2", 22050, "eng", {}),))
    for rel, (codec, fmt) in PATTERNS.items():
        write(root / rel, small_test_pattern(24), codec=codec, fmt=fmt)
    write(root / "tape.mpg", woven(6), codec="mpeg2video", fmt="mpeg", options={"flags": "+ildct+ilme"},
          field_order="tff")
    for name, (codec, fmt, audio) in CONTAINERS.items():
        whole = write(root / "cut" / name, np.stack([moving_bar(i) for i in range(12)]), codec=codec, fmt=fmt,
                      audio=((audio, 48000, "eng", {}),))
        data = whole.read_bytes()
        whole.unlink()
        (root / "cut" / f"header {name}").write_bytes(header_only(name, data))
        (root / "cut" / f"truncated {name}").write_bytes(truncated(data))
    return root


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory) -> tuple[Path, Path, list[subprocess.CompletedProcess]]:
    """The archive restored with the bicubic preset at x2, then again with --deinterlace frame, and a
    run asked for --deinterlace yes."""
    archive = build_old(tmp_path_factory.mktemp("old"))
    output = tmp_path_factory.mktemp("old_restored")
    first = run_job(archive, output, *BICUBIC)
    rows = {"rows": latest_rows(output)}  # the first run's rows, before the second replaces them
    again = run_job(archive, output, *BICUBIC, "--deinterlace", "frame")
    refused = run_job(archive, tmp_path_factory.mktemp("never"), *BICUBIC, "--deinterlace", "yes")
    return archive, output, [first, rows, again, refused]


def test_the_old_ones_restore_or_fail_for_good_with_their_reasons(old_runs):
    archive, output, (first, rows, again, refused) = old_runs
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = rows["rows"]
    # the WMV assembles, its WMA as FLAC, every frame and sample kept
    assert (rows["old.wmv"]["status"], rows["old.wmv"]["frames"]) == ("done", 25), rows["old.wmv"]
    # idet calls the small pattern top field first; the pictures cannot confirm it: progressive, one per frame
    for rel in PATTERNS:
        row = rows[rel]
        assert (row["status"], row["frames"], row["deinterlaced"]) == ("done", 24, ""), row
        assert row["interlacing"].startswith("progressive: stream flags none, idet tff"), row["interlacing"]
        assert "pictures cannot tell" in row["interlacing"]
        out_rel = rel.rsplit(".", 1)[0] + ".mp4"
        assert probe_timestamps(output / out_rel)[0].frame_count == 24
    tape = rows["tape.mpg"]
    assert (tape["status"], tape["frames"], tape["deinterlaced"]) == ("done", 12, "bwdif, field rate, tff"), tape
    assert tape["interlacing"].startswith("tff: stream flags tff"), tape["interlacing"]
    for name, reasons in CUT_REASONS.items():
        for kind, reason in zip(("header", "truncated"), reasons):
            row = rows[f"cut/{kind} {name}"]
            assert (row["status"], row["permanent"]) == ("failed", True), row
            assert re.match(reason, row["error"]), row["error"]


def test_deinterlace_frame_redoes_the_archive_at_one_picture_per_frame_and_a_bad_value_stops_first(old_runs):
    archive, output, (_, _, again, refused) = old_runs
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = latest_rows(output)
    tape = rows["tape.mpg"]
    assert (tape["status"], tape["frames"], tape["deinterlaced"]) == ("done", 6, "bwdif, frame rate, tff"), tape
    assert tape["interlacing"].endswith("--deinterlace frame: tff")
    pattern = rows["patterns/pattern mpeg4.avi"]  # the user's word: every source is interlaced
    assert (pattern["frames"], pattern["deinterlaced"]) == (24, "bwdif, frame rate, tff"), pattern
    assert refused.returncode == 2 and "invalid choice: 'yes'" in refused.stderr, refused.stderr
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr
