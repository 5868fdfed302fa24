"""The restore path on the meta device (star_model.meta_run): device bytes per phase, the faults it
stands for, and the official preset's whole path at full size (slow lane)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from star_model.attention import KERNEL_MAX_BATCH, attend
from star_model.memory import PHASES
from star_model.meta_run import META, DeviceFault, DeviceReport, FusedAttention, MetaDevice, run_on_meta
from star_model.presets import build_models, get_preset
from star_model.restore import StarRestorer

ROOT = Path(__file__).resolve().parents[1]


def meta_restorer(preset: str, **settings) -> StarRestorer:
    with torch.device(META):
        models = build_models(get_preset(preset), None, device=META, dtype=torch.bfloat16)
    return StarRestorer(*models, get_preset(preset).restore_config(**settings))


def test_the_tiny_path_runs_on_meta_and_reports_every_phase():
    restorer = meta_restorer("tiny", scale=2, window=4, tile=(6, 8))
    out, report = run_on_meta(restorer, 6, 32, 48)
    assert out.shape == (6, 64, 96, 3)
    assert report.weights_bytes > 0
    for phase in PHASES:
        assert report.above_weights(phase) > 0, phase
    assert report.flops > 0
    assert report.largest_attention_batch > 0
    # every copy between the host and the device leaves the host free (star_model/transfer.py)
    assert report.blocking_copies == 0


def test_repeated_denoiser_calls_count_like_dispatched_ones():
    """The replay of a repeated forward adds the FLOPs and attention calls it would have made: one
    solver evaluation against two give twice the sampler's share."""
    one = run_on_meta(meta_restorer("tiny", scale=2, window=4, solver_mode="normal", steps=1), 4, 32, 32)[1]
    two = run_on_meta(meta_restorer("tiny", scale=2, window=4, solver_mode="normal", steps=2), 4, 32, 32)[1]
    assert sum(two.attention.values()) > sum(one.attention.values())
    assert two.flops > one.flops
    assert two.peaks["sampler"] == one.peaks["sampler"]


def test_attention_beyond_the_cuda_launch_limit_is_a_fault_and_attend_stays_within_it():
    q = torch.empty(KERNEL_MAX_BATCH + 1, 1, 4, 8, device=META, dtype=torch.bfloat16)
    report = DeviceReport()
    with FusedAttention(report), MetaDevice(report):
        with pytest.raises(DeviceFault, match="65535"):
            F.scaled_dot_product_attention(q, q, q)
        out = attend(q, q, q)  # sliced into launches the kernels take
    assert out.shape == q.shape
    assert report.largest_attention_batch == KERNEL_MAX_BATCH


def test_mixed_dtype_matmul_is_a_fault_and_device_to_host_copies_give_zeros():
    a = torch.empty(4, 4, device=META, dtype=torch.bfloat16)
    report = DeviceReport()
    mode = MetaDevice(report)
    with mode:
        with pytest.raises(DeviceFault, match="mixed dtypes"):
            a @ torch.empty(4, 4, device=META)
        host = a.to("cpu", torch.float32)
        assert report.blocking_copies == 1
        a.to("cpu", non_blocking=True)
        torch.zeros(2).to(META, non_blocking=True)
        assert report.blocking_copies == 1
        torch.zeros(2).to(META)
        assert report.blocking_copies == 2
        b = torch.empty(1024, device=META)
        assert mode.live == 4096 + report.weights_bytes
        del b
        assert mode.live == 0
    assert host.device.type == "cpu" and host.dtype == torch.float32 and not host.any()


def dry_run_script():
    spec = importlib.util.spec_from_file_location("gpu_dry_run", ROOT / "jobs" / "measure" / "gpu_dry_run.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_the_planner_holds_to_the_dry_run_at_a_small_size():
    """The official preset at 320x200 x4 (VAE tiles and latent tiles both in use): every phase's estimate
    is above the device bytes the dry run counts, by at most a quarter."""
    result = dry_run_script().run_case("small", 4, 24 * 2**30, size=(200, 320, 4))
    assert result.fits and result.calibrated, result.line
    assert set(result.ratios) == set(PHASES)


@pytest.mark.slow
def test_the_official_preset_at_full_size_fits_24_gib_at_480p_x4_and_1080p_x2():
    script = dry_run_script()
    for case in ("480p-x4", "1080p-x2"):
        result = script.run_case(case, 32, 24 * 2**30)
        assert result.fits and result.calibrated, result.line
        assert "FAULT" not in result.line
