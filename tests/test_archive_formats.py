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

from formats import moving_bar, woven, write
from helpers import latest_rows, read_summary, run_job
from pipelines.media.probe import probe_timestamps

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
