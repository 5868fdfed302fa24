"""The CogVideoX STAR network: key map, strict loading, shape-chosen configs, LIEM hooks, any latent size,
and the parity command on shared/parity_cogvideox."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, shared
from star_model.checkpoint import CheckpointError
from star_model.cogvideox.config import FIVE_B, TINY, TWO_B, config_from_shapes
from star_model.cogvideox.keymap import ENGINE_PREFIX, sat_to_ours, unwrap_engine
from star_model.cogvideox.network import CogStarNetwork, build_network, network_from_state
from star_model.cogvideox.weights import convert_sat, read_network


@pytest.fixture(scope="module")
def fixture():
    return shared("parity_cogvideox")


@pytest.fixture(scope="module")
def sat(fixture):
    return unwrap_engine(load_file(fixture / "tiny_state_dict.safetensors"))[0]


def test_the_key_map_gives_the_fixtures_diffusers_conversion_and_lists_every_key(fixture, sat):
    ours, report = sat_to_ours(sat)
    reference = load_file(fixture / "tiny_diffusers_state_dict.safetensors")
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    lora = [k for k in sat if ".matrix_" in k]
    fates = set(report.renamed) | set(report.split) | set(report.merged) | set(report.dropped)
    assert fates == set(sat) and set(report.merged) == set(lora) and report.lora_rank == 8
    assert set(report.dropped) == {"mixins.pos_embed.freqs_sin", "mixins.pos_embed.freqs_cos",
                                   "transformer.position_embeddings.weight"}


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"transformer.layers.0.attention.extra.weight": torch.zeros(1)}), "match no rule"),
    (lambda s: s.pop("transformer.layers.1.attention.query_key_value.matrix_B.2"), "LoRA pieces"),
    (lambda s: [s.pop(k) for k in list(s) if "layers.0.attention.dense.matrix" in k], "without its matrix"),
])
def test_the_key_map_refuses_what_it_does_not_know(sat, change, message):
    broken = dict(sat)
    change(broken)
    with pytest.raises(CheckpointError, match=message):
        sat_to_ours(broken)


def test_lora_is_merged_not_dropped(sat):
    """Without its LoRA pairs (a plain SAT weight, which SAT's LoraLinear also takes) q differs."""
    plain = {k.replace(".original.", "."): v for k, v in sat.items() if ".matrix_" not in k}
    merged, _ = sat_to_ours(sat)
    unmerged, report = sat_to_ours(plain)
    key = "transformer_blocks.0.attn1.to_q.weight"
    assert report.lora_rank is None and not torch.allclose(merged[key], unmerged[key])


def test_the_sat_file_loads_strictly_with_weights_only_and_converts(fixture, sat, tmp_path):
    raw = load_file(fixture / "tiny_state_dict.safetensors")
    torch.save({"module": raw, "iteration": 1}, tmp_path / "mp_rank_00_model_states.pt")
    cfg = convert_sat(tmp_path / "mp_rank_00_model_states.pt", tmp_path / "cog.safetensors", "fp32")
    again, state = read_network(tmp_path / "cog.safetensors")
    assert cfg == again == TINY  # the tiny sizes, recognised by shape
    inputs, outputs = load_file(fixture / "tiny_inputs.safetensors"), load_file(fixture / "tiny_outputs.safetensors")
    with torch.no_grad():
        out = network_from_state(cfg, state)(inputs["x_noisy"], inputs["lq"], inputs["t"], inputs["context"])
    assert (out - outputs["output"]).abs().max() < 1e-4
    torch.save({"weights": raw}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="under 'module'"):
        read_network(tmp_path / "other.pt")
    torch.save({"module": {**raw, "stray.weight": torch.zeros(1)}}, tmp_path / "stray.pt")
    with pytest.raises(CheckpointError, match="stray.weight"):
        read_network(tmp_path / "stray.pt")
    assert all(k.startswith(ENGINE_PREFIX) for k in raw)


@pytest.mark.parametrize("cfg", [FIVE_B, TWO_B])
def test_the_released_sizes_are_told_apart_by_their_shapes(cfg):
    with torch.device("meta"):
        state = CogStarNetwork(cfg).transformer.state_dict()
    assert config_from_shapes(state, cfg.position) == cfg
    assert sum(v.numel() for v in state.values()) == {"5b": 5_570_483_880, "2b": 1_693_909_752}[cfg.name]


def test_a_plain_cogvideox_checkpoint_is_not_star():
    with torch.device("meta"):
        state = CogStarNetwork(TINY).transformer.state_dict()
    state["patch_embed.proj.weight"] = torch.empty(64, 16, 2, 2, device="meta")
    with pytest.raises(ValueError, match="not STAR"):
        config_from_shapes(state, "rope")


def test_liem_gates_the_image_tokens_and_any_latent_size_runs(fixture):
    state = load_file(fixture / "tiny_diffusers_state_dict.safetensors")
    cfg = config_from_shapes(state, "rope")
    network = network_from_state(cfg, state)
    x, lr = torch.randn(1, 2, 16, 10, 14), torch.randn(1, 2, 16, 10, 14)  # not the fixture's 8x12
    t, context = torch.tensor([500.0]), torch.randn(1, 6, 40)
    with torch.no_grad():
        before = network(x, lr, t, context)
        assert before.shape == x.shape
        cos, _ = network.rope_tables(2, 5, 7, torch.device("cpu"))
        assert cos.shape == (2 * 5 * 7, cfg.head_dim)
        network.transformer.transformer_blocks[1].spa_local.conv1.weight.zero_()  # gate 0.5 everywhere
        assert not torch.allclose(network(x, lr, t, context), before)
    with pytest.raises(ValueError, match="multiple of the patch"):
        network(x[..., :9, :], lr[..., :9, :], t, context)


def test_parity_command_passes_on_the_cogvideox_fixtures(fixture):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "parity.py"), str(fixture)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("cog.forward.output", "cog.sampler.replay.state", "cog.sampler.output"):
        assert any(line.startswith("ok") and name in line for line in result.stdout.splitlines()), result.stdout


def test_the_2b_layout_with_sin_cos_positions_loads_from_meta_and_runs_at_any_size():
    """Its sin-cos table is a non-persistent buffer: left on meta by the strict load unless remade."""
    cfg = dataclasses.replace(TINY, name="tiny-sincos", position="sincos")
    built = build_network(cfg)
    loaded = network_from_state(cfg, built.transformer.state_dict())
    x, context, t = torch.randn(1, 4, 16, 8, 12), torch.randn(1, 6, 40), torch.tensor([3.0])
    with torch.no_grad():
        assert torch.equal(built(x, x, t, context), loaded(x, x, t, context))
        other = torch.randn(1, 2, 16, 10, 14)
        assert loaded(other, other, t, context).shape == other.shape
