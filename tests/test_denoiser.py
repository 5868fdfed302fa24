"""The denoiser: official key layout, fixture parity through the CLI, half precision, checkpointing."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import REPO, shared
from star_model import attention
from star_model.denoiser_config import OFFICIAL, TINY, DenoiserConfig
from star_model.unet import StarDenoiser, load_denoiser


def _official_meta_state() -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        model = StarDenoiser(OFFICIAL)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_official_preset_has_the_released_checkpoint_layout(parity_dir):
    ours = _official_meta_state()
    assert len(ours) == 2247
    assert sum(math.prod(s) for _, s in ours) == 2_041_121_910
    reference = json.loads((parity_dir / "official_keys_i2vgenxl.json").read_text())
    assert ours == [(k, tuple(s)) for k, s, _ in reference["keys"]]  # every name, shape and the order
    liem = [(k, s) for k, s in ours if ".local1." in k or ".local2." in k]
    assert len(liem) == reference["liem_keys"]["count_total"] == 73
    assert sum(math.prod(s) for _, s in liem) == reference["liem_keys"]["elements_total"]


def test_official_preset_matches_the_reference_tsv():
    tsv = shared("reference/star_official_i2vgenxl_state_dict_keys.tsv")
    rows = [line.split("\t") for line in tsv.read_text().splitlines() if line.strip()]
    expected = [(key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip())) for key, shape in rows]
    assert _official_meta_state() == expected


def test_tiny_preset_is_the_fixture_config(parity_dir):
    meta = json.loads((parity_dir / "tiny_config.json").read_text())
    assert DenoiserConfig.from_official_kwargs(meta["constructor_kwargs"]) == TINY
    assert DenoiserConfig.from_official_kwargs(meta["official_defaults"]) == OFFICIAL
    assert sum(p.numel() for p in StarDenoiser(TINY).parameters()) == meta["num_elements"]


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 48}, "GroupNorm"),
    ({"head_dim": 24, "dim": 64}, "head_dim"),
    ({"dim_mult": ()}, "dim_mult"),
    ({"prediction": "eps"}, "prediction"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenoiserConfig(**kwargs)


def test_a_fresh_residual_network_returns_the_hint_guided_or_not():
    """prediction="residual" (nano): x̂0 = hint + output, and an untrained network's output is zero, so
    the sampler's x̂0 is the hint itself, through the one-pass path and through guided velocities."""
    from star_model.diffusion import guided_x0, velocity, x0_from_v
    from star_model.schedule import build_schedule

    cfg = dataclasses.replace(TINY, prediction="residual")
    model = load_denoiser(cfg, None, seed=3)
    schedule = build_schedule()
    gen = torch.Generator().manual_seed(0)
    xt, hint = (torch.randn(1, cfg.in_channels, 2, 10, 8, generator=gen) for _ in range(2))
    t = torch.tensor([899])
    y = torch.randn(1, 77, cfg.context_dim, generator=gen)
    with torch.no_grad():
        assert torch.equal(model(xt, t, y, hint=hint), torch.zeros_like(xt))
        assert torch.equal(guided_x0(model, schedule, xt, t, y, y, hint, 1.0, 0.0), hint)
        assert torch.allclose(guided_x0(model, schedule, xt, t, y, -y, hint, 7.5, 0.2), hint, atol=1e-5)
        out = torch.randn(xt.shape, generator=gen)  # any output: v made from it gives back hint + out
        assert torch.allclose(x0_from_v(schedule, xt, velocity(model, schedule, out, xt, t, hint), t), hint + out,
                              atol=1e-5)
        # a v-prediction network's output is its velocity
        assert torch.equal(velocity(load_denoiser(TINY, None, seed=3), schedule, out, xt, t, hint), out)


def test_official_kwargs_that_star_never_uses_are_refused():
    with pytest.raises(ValueError, match="use_fps_condition"):
        DenoiserConfig.from_official_kwargs({"use_fps_condition": True})
    with pytest.raises(ValueError, match="unknown"):
        DenoiserConfig.from_official_kwargs({"dims": 3})


def _run_parity(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "parity.py"), str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_parity_command_passes_on_the_official_fixtures(parity_dir):
    """Runs the full-size check too when the folder has it (about 9 GB of RAM, a minute on 2 cores)."""
    result = _run_parity(parity_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("tiny.output", "tiny.control.06"):
        assert any(line.startswith("ok") and name in line for line in lines), result.stdout
    if (parity_dir / "full_outputs.safetensors").exists():
        assert any(line.startswith("ok") and "full.output" in line for line in lines), result.stdout


def _write_fixture_folder(folder: Path, kwargs: dict, seed: int, shape: tuple[int, ...], context_len: int) -> None:
    """A folder in the parity format for another config, seed and shape.

    Its outputs come from OUR model, so it proves only that the command reads any such folder
    (config, shapes, intermediates) and that it fails when an output is off, not parity itself.
    """
    folder.mkdir()
    config = DenoiserConfig.from_official_kwargs(kwargs)
    torch.manual_seed(seed)
    model = StarDenoiser(config).eval()
    (folder / "tiny_config.json").write_text(json.dumps({"constructor_kwargs": kwargs}))
    save_file(model.state_dict(), folder / "tiny_state_dict.safetensors")
    b, c, f, h, w = shape
    inputs = {"x": torch.randn(shape), "hint": torch.randn(shape), "t": torch.tensor([999, 3][:b]),
              "y": torch.randn(b, context_len, config.context_dim)}
    save_file(inputs, folder / "tiny_inputs.safetensors")
    with torch.no_grad():
        out = model(inputs["x"], inputs["t"], inputs["y"], hint=inputs["hint"])
    save_file({"output": out}, folder / "tiny_outputs.safetensors")


def test_parity_command_reads_other_configs_and_fails_on_a_wrong_output(tmp_path):
    kwargs = {"in_dim": 4, "dim": 32, "context_dim": 24, "out_dim": 4, "dim_mult": [1, 2],
              "num_heads": 2, "head_dim": 16, "num_res_blocks": 2, "attn_scales": [1.0],
              "temporal_attention": True, "use_fps_condition": False}
    folder = tmp_path / "other"
    _write_fixture_folder(folder, kwargs, seed=3, shape=(2, 4, 5, 6, 8), context_len=3)
    result = _run_parity(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tiny.output" in result.stdout

    outputs = load_file(folder / "tiny_outputs.safetensors")
    outputs["output"][0, 0, 0, 0, 0] += 1e-3
    save_file(outputs, folder / "tiny_outputs.safetensors")
    result = _run_parity(folder)
    assert result.returncode == 1
    assert any(line.startswith("FAIL") and "tiny.output" in line for line in result.stdout.splitlines())


def test_parity_command_says_when_a_folder_has_no_fixture(tmp_path):
    result = _run_parity(tmp_path)
    assert result.returncode == 2
    assert "no parity fixture" in result.stderr


def _fixture_model_and_inputs(folder: Path, dtype: torch.dtype) -> tuple[StarDenoiser, dict[str, torch.Tensor]]:
    config = DenoiserConfig.from_official_kwargs(json.loads((folder / "tiny_config.json").read_text())["constructor_kwargs"])
    model = load_denoiser(config, folder / "tiny_state_dict.safetensors", dtype=dtype)
    return model, load_file(folder / "tiny_inputs.safetensors")


@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.03), (torch.float16, 0.005)])
def test_half_precision_stays_close_to_fp32(parity_dir, dtype, bound):
    """Relative max error of the whole forward in half precision against fp32 (fixture weights)."""
    reference, inputs = _fixture_model_and_inputs(parity_dir, torch.float32)
    model, _ = _fixture_model_and_inputs(parity_dir, dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    with torch.no_grad():
        want = reference(inputs["x"], inputs["t"], inputs["y"], hint=inputs["hint"])
        try:
            got = model(inputs["x"], inputs["t"], inputs["y"], hint=inputs["hint"])
        except RuntimeError as exc:  # an op without a kernel for this dtype on this device
            pytest.skip(f"{dtype} not supported on CPU here: {exc}")
    assert got.dtype == dtype
    relative = float((got.float() - want).abs().max() / want.abs().max())
    print(f"{dtype}: relative max error {relative:.2e}")
    assert relative < bound


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = StarDenoiser(TINY)
    model.train()  # dropout on: checkpointing must replay the same dropout masks
    x, hint = torch.randn(2, 4, 3, 10, 12), torch.randn(2, 4, 3, 10, 12)
    y, t = torch.randn(2, 5, TINY.context_dim), torch.tensor([10, 700])

    def grads(checkpointed: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointed)
        torch.manual_seed(1)
        model(x, t, y, hint=hint).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys()
    assert all(g.abs().sum() > 0 for n, g in plain.items() if "VideoControlNet" in n and "zero_convs" in n)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_load_denoiser_builds_in_place_without_random_init(parity_dir):
    model, inputs = _fixture_model_and_inputs(parity_dir, torch.float32)
    assert not model.training
    state = load_file(parity_dir / "tiny_state_dict.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_attention_beyond_the_cuda_kernels_batch_limit_runs_in_slices_with_the_same_numbers(monkeypatch):
    """Temporal attention has a batch row per latent pixel; CUDA's fused kernels launch at most 65,535
    of them. Over the limit (shrunk here to 5) every SDPA call stays within it and the output is the
    whole-batch attention's."""
    torch.manual_seed(0)
    layer = attention.Attention(16, heads=2, head_dim=8).eval()
    x = torch.randn(12, 3, 16)
    with torch.no_grad():
        whole = layer(x)
        batches = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda q, k, v: batches.append(q.shape[0]) or sdpa(q, k, v))
        monkeypatch.setattr(attention, "KERNEL_MAX_BATCH", 5)
        sliced = layer(x)
    assert batches == [5, 5, 2]
    assert torch.equal(sliced, whole)
