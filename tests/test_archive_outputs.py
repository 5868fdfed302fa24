"""What archive users ask of the job's outputs (issue 26), end to end through the job command: samples
of every video before the full run, each video with its own prompt, a delivery copy in H.265 at a
target size, masters in FFV1 and ProRes that keep 4:2:2 and 10 bits, and the sample run's report page
in a real browser."""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from browser import assert_not_blank, screenshot
from formats import small_test_pattern, write
from helpers import TINY_UNSCALED, decode_all, latest_rows, luma, noisy_frames, psnr, read_summary, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RATE = 12  # fps of the made clips: 2 s is 24 pictures
PROMPTED = {  # rel -> where its prompt comes from
    "web/sidecar.mp4": "a dove in flight",  # web/sidecar.mp4.txt
    "web/listed.mp4": "a street at night",  # the --prompts file
    "web/plain.mp4": "old footage",  # neither: the run's --prompt
}
DELIVERY = ("--codec", "h265", "--height", "96", "--prompt", "old footage")  # 64x48 sources: x2 reaches it
BICUBIC = ("--preset", "bicubic")


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def stream(path: str | Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return {"codec": v.codec_context.codec.name, "size": (v.codec_context.width, v.codec_context.height),
                "pix_fmt": v.codec_context.pix_fmt, "sar": v.sample_aspect_ratio or Fraction(1),
                "seconds": float(c.duration) / av.time_base, "audio": len(c.streams.audio),
                "format": c.format.name}


# -- samples, prompts, a delivery copy at a size ----------------------------------------------------


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    """Three 2-second clips, one with a sidecar prompt and one named in a prompts file; a 1-second sample
    run, then the full delivery run with the same settings."""
    root = tmp_path_factory.mktemp("prompted")
    archive, output = root / "in", root / "out"
    (archive / "web").mkdir(parents=True)
    for seed, rel in enumerate(PROMPTED):
        write(archive / rel, noisy_frames(2 * RATE, (64, 48), seed=seed), codec="libx264", rate=RATE,
              audio=(("aac", 48000, "eng", {}),) if rel == "web/plain.mp4" else ())
    (archive / "web/sidecar.mp4.txt").write_text("a dove in flight\n")
    prompts = root / "prompts.csv"
    prompts.write_text("rel,prompt\nweb/listed.mp4,a street at night\n")
    flags = (*DELIVERY, "--prompts", str(prompts))
    sample = ok(run_job(archive, output, *flags, "--sample", "1", settings=TINY_UNSCALED))
    samples = {path.parent.parent.name: latest_rows(path.parent) for path in output.glob("_samples/*/1s-at-middle/_ledger")}
    no_ledger_after_sample = not (output / "_ledger").exists()
    full = ok(run_job(archive, output, *flags, settings=TINY_UNSCALED))
    return archive, output, flags, sample, samples, no_ledger_after_sample, full


def test_a_sample_run_restores_an_excerpt_of_each_video_with_its_settings_and_marks_nothing_done(prompted):
    archive, output, _, sample, samples, no_ledger_after_sample, _ = prompted
    assert no_ledger_after_sample, "a sample run wrote the full run's ledger"
    ((key, rows),) = samples.items()  # one sample layout: the run's settings key, excerpt 1s-at-middle
    assert sorted(rows) == sorted(PROMPTED) and {r["status"] for r in rows.values()} == {"done"}
    for rel, row in rows.items():
        out = stream(row["output"])
        assert Path(row["output"]).is_relative_to(output / "_samples" / key / "1s-at-middle"), row["output"]
        assert out["codec"] == "hevc" and out["size"] == (128, 96), (rel, out)
        assert out["seconds"] == pytest.approx(1, abs=1.5 / RATE), (rel, out)  # 1 s of the 2
        assert len(decode_all(row["output"])) == row["frames"] == RATE and row["prompt"] == PROMPTED[rel]
    assert read_summary(output / "_samples" / key / "1s-at-middle")["frames"] == len(PROMPTED) * RATE
    assert stream(rows["web/plain.mp4"]["output"])["audio"] == 1  # the excerpt's audio with it
    # the settings keys are the full run's own (so a sample shows what the full run will make)
    full_rows = latest_rows(output)
    assert key == full_rows["web/plain.mp4"]["settings"]  # the layout is named after the run's key
    assert {rel: row["settings"] for rel, row in rows.items()} == {rel: row["settings"] for rel, row in full_rows.items()}


def test_the_sample_runs_report_page_renders(prompted, tmp_path):
    _, output, _, _, samples, _, _ = prompted
    (key,) = samples
    page = output / "_samples" / key / "1s-at-middle" / "_ledger" / "report.html"
    text = page.read_text()
    links = re.findall(r'(?:href|src)="([^"]*)"', text)
    assert links and all(rel in text for rel in PROMPTED)
    assert not [link for link in links if link.startswith("/") or ":" in link.split("/")[0]], links  # relative only
    assert_not_blank(screenshot(page, tmp_path / "sample-report.png", size=(1280, 1400)))


def test_each_video_is_restored_with_its_own_prompt_under_its_own_key(prompted):
    _, output, _, _, _, _, full = prompted
    rows = latest_rows(output)
    assert {rel: row["prompt"] for rel, row in rows.items()} == PROMPTED
    keys = {rel: row["settings"] for rel, row in rows.items()}
    assert len(set(keys.values())) == 3  # two videos with prompts of their own, one with the run's
    for row in rows.values():
        assert (row["status"], row["model_scale"], row["width"], row["height"]) == ("done", 2, 128, 96)
        assert stream(row["output"])["codec"] == "hevc" and len(decode_all(row["output"])) == 2 * RATE


def test_a_changed_sidecar_redoes_only_its_video(prompted):
    archive, output, flags, _, _, _, _ = prompted
    before = latest_rows(output)
    mtimes = {rel: Path(row["output"]).stat().st_mtime_ns for rel, row in before.items()}
    (archive / "web/sidecar.mp4.txt").write_text("a pigeon in flight\n")
    ok(run_job(archive, output, *flags, settings=TINY_UNSCALED))
    after = latest_rows(output)
    summary = read_summary(output)
    assert (summary["restored"], summary["skipped_done"]) == (1, 2), summary
    assert after["web/sidecar.mp4"]["prompt"] == "a pigeon in flight"
    assert after["web/sidecar.mp4"]["settings"] not in {row["settings"] for row in before.values()}
    for rel in ("web/listed.mp4", "web/plain.mp4"):
        assert after[rel]["run_id"] == before[rel]["run_id"]
        assert Path(after[rel]["output"]).stat().st_mtime_ns == mtimes[rel]


# -- SD to 1080p; masters that keep 4:2:2 and 10 bits ---------------------------------------------


@pytest.fixture(scope="module")
def tapes(tmp_path_factory):
    """PAL 16:9 and 4:3 captures (720x576, anamorphic) and a 10-bit 4:2:2 master, restored by the
    model-free bicubic preset (the sizes and formats are the job's, whatever the model): H.265 at
    1920x1080, then FFV1 and ProRes masters at x2."""
    root = tmp_path_factory.mktemp("tapes")
    archive = root / "in"
    archive.mkdir()
    pal = np.repeat(np.repeat(noisy_frames(6, (90, 72), seed=7), 8, axis=1), 8, axis=2)  # 720x576
    write(archive / "pal wide.mp4", pal, codec="libx264", sar=Fraction(64, 45), audio=(("aac", 48000, "eng", {}),))
    write(archive / "pal narrow.mp4", pal, codec="libx264", sar=Fraction(16, 15))
    write(archive / "master.mkv", small_test_pattern(6), codec="ffv1", pix_fmt="yuv422p10le")
    outputs = {}
    for name, flags in {"1080p": ("--codec", "h265", "--size", "1920x1080"), "ffv1": ("--codec", "ffv1", "--scale", "2"),
                        "prores": ("--codec", "prores", "--scale", "2")}.items():
        ok(run_job(archive, root / name, *BICUBIC, *flags, settings=()))
        outputs[name] = latest_rows(root / name)
    return archive, outputs


def test_sd_reaches_1080p_at_the_smallest_model_scale_keeping_the_display_aspect(tapes):
    _, outputs = tapes
    rows = outputs["1080p"]
    expected = {  # rel -> (model scale, delivered size): fitted in 1920x1080, square pixels, never padded
        "pal wide.mp4": (3, (1920, 1080)),  # 720 wide needs x2.67: x3, then Lanczos down to 16:9 1080p
        "pal narrow.mp4": (2, (1440, 1080)),  # 4:3 PAL: 576 lines need x1.875
        "master.mkv": (4, (1440, 1080)),  # 64x48 would need x22.5: the model's x4 at most, then Lanczos
    }
    for rel, (scale, size) in expected.items():
        row, out = rows[rel], stream(rows[rel]["output"])
        assert (row["model_scale"], (row["width"], row["height"]), row["sar"]) == (scale, size, "1:1"), (rel, row)
        assert (out["codec"], out["size"], out["sar"]) == ("hevc", size, 1), (rel, out)
    assert stream(rows["pal wide.mp4"]["output"])["audio"] == 1
    assert stream(rows["master.mkv"]["output"])["pix_fmt"] == "yuv422p10le"  # H.265 Main 4:2:2 10


def test_masters_keep_the_sources_chroma_and_depth_and_decode_to_the_same_pictures(tapes):
    _, outputs = tapes
    for codec, fmt, row in (("ffv1", "matroska", outputs["ffv1"]["master.mkv"]),
                            ("prores", "mov", outputs["prores"]["master.mkv"])):
        out = stream(row["output"])
        assert (out["codec"], out["pix_fmt"], out["size"]) == (codec, "yuv422p10le", (128, 96)), out
        assert fmt in out["format"]
    with av.open(outputs["ffv1"]["master.mkv"]["output"]) as c:  # FFV1 version 2+ (level 3 here) only
        assert c.streams.video[0].codec_context.extradata  # carries a configuration record
    lossless, prores = (luma(np.stack(decode_all(outputs[name]["master.mkv"]["output"]))) for name in ("ffv1", "prores"))
    assert lossless.shape == prores.shape and psnr(lossless, prores) > 38  # ProRes 422 HQ's loss
    assert outputs["ffv1"]["master.mkv"]["settings"] != outputs["prores"]["master.mkv"]["settings"]
    # the PAL master keeps its anamorphic pixels (no --size: the model's scale, the source's SAR). Not
    # asserted for Matroska: PyAV cannot set the stream's aspect that FFmpeg's muxer writes as the track's
    # display size, so FFV1 masters of anamorphic sources carry their SAR only in the ledger row.
    assert stream(outputs["prores"]["pal wide.mp4"]["output"])["sar"] == Fraction(64, 45)
    assert outputs["ffv1"]["pal wide.mp4"]["sar"] == "64:45"
