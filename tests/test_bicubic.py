"""The `bicubic` preset: plain bicubic upscaling in place of STAR, through the whole restore job (a dry
run on CPUs), with its own settings key, and no weights taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from formats import moving_bar
from helpers import decode_all, latest_rows, load_job, make_clip, psnr, read_summary, run_job
from pipelines.job_support import ConfigError
from pipelines.media.probe import probe
from pipelines.restore.job import ArchiveJob, validate
from star_model.bicubic import BicubicRestorer
from star_model.presets import load_restorer, restore_settings


def test_the_restorer_is_torch_bicubic_in_uint8_and_uint16():
    restorer = load_restorer("bicubic", config=restore_settings("bicubic", 3))
    assert isinstance(restorer, BicubicRestorer) and restorer.device.type == "cpu"
    rng = np.random.default_rng(0)
    frames_u8 = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    up = restorer(frames_u8, "a prompt", seed=3)
    assert up.dtype == np.uint8 and up.shape == (2, 15, 21, 3)
    expected = F.interpolate(torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float(), scale_factor=3,
                             mode="bicubic", align_corners=False)
    expected = expected.clamp(0, 255).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    np.testing.assert_array_equal(up, expected)
    deep = restorer(frames_u8.astype(np.uint16) * 257)  # 16 bits in, 16 bits out, same picture
    assert deep.dtype == np.uint16 and np.abs(deep / 257.0 - up).max() <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="expected uint8 or uint16 frames"):
        restorer(frames_u8.astype(np.float32))


def test_bicubic_has_its_own_settings_key_and_no_weights():
    bicubic = ArchiveJob(input="in", output="out", preset="bicubic")
    assert bicubic.weights_digest == "none" and bicubic.device == "cpu"  # auto: CPUs, a GPU would idle
    keys = {ArchiveJob(input="in", output="out", preset=name).settings_key() for name in ("bicubic", "tiny", "nano")}
    assert len(keys) == 3
    assert "plain bicubic" in bicubic.warning()


@pytest.mark.parametrize("changes, message", [
    (dict(weights="/weights"), "upscales without a model and takes no weights; drop --weights /weights"),
    (dict(device="gpu"), "runs on CPUs only"),
    (dict(accelerator_type="L4"), "runs on CPUs only"),
])
def test_bicubic_config_errors(tmp_path, changes, message):
    (tmp_path / "in").mkdir()
    job = ArchiveJob(input=str(tmp_path / "in"), output=str(tmp_path / "out"), preset="bicubic", **changes)
    with pytest.raises(ConfigError, match=message):
        validate(job)


def test_bicubic_with_weights_exits_2_before_ray(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--preset", "bicubic",
            "--weights", str(tmp_path)]
    assert load_job("upscale_archive").main(argv) == 2
    assert "takes no weights" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_whole_job_upscales_with_bicubic(tmp_path):
    """A clip with sound through the whole job: the output is the bicubic upscale of the source, within
    what the final H.264 encode loses, with the sound carried over and a ledger row per video."""
    (tmp_path / "in").mkdir()
    source = make_clip(tmp_path / "in/bar.mp4", np.stack([moving_bar(i) for i in range(12)]), audio_seconds=0.5,
                       options={"crf": "10"})
    result = run_job(tmp_path / "in", tmp_path / "out", "--preset", "bicubic")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = tmp_path / "out/bar.mp4"
    restored = decode_all(output)
    expected = BicubicRestorer(restore_settings("bicubic", 2))(np.stack(decode_all(source)))
    assert len(restored) == len(expected) == 12
    scores = [psnr(r, e) for r, e in zip(restored, expected)]
    assert min(scores) > 35, scores
    assert [s.codec for s in probe(output).audio] == ["aac"]
    row = latest_rows(tmp_path / "out")["bar.mp4"]
    assert row["status"] == "done" and row["device"] == "cpu"
    assert "plain bicubic" in read_summary(tmp_path / "out")["warning"]
