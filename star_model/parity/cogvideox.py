"""Parity of the CogVideoX STAR with the official SAT fixtures (shared/parity_cogvideox): the key map and
the network forward on the tiny weights, the schedule tables, and the sampler replayed both with the
recorded x̂0 pairs and end to end with the tiny network."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from star_model.cogvideox.guidance import guide, x0_pair
from star_model.cogvideox.keymap import position_of, sat_to_ours, unwrap_engine
from star_model.cogvideox.config import config_from_shapes
from star_model.cogvideox.network import CogStarNetwork, network_from_state
from star_model.cogvideox.sampler import denoiser_table, dynamic_cfg_scale, sample_vpsde_dpmpp_2m, sampler_steps
from star_model.parity import Check, compare
from star_model.sampler import replayed_noise

FILES = ("tiny_config.json", "tiny_state_dict.safetensors", "tiny_inputs.safetensors", "tiny_outputs.safetensors",
         "sampler.json", "sampler.safetensors")
# The fixture README suggests atol 1e-4 for a float32 re-implementation. We measure 1.1e-5: the time
# embedding alone is 5.4e-6 off the fixture's `time_embed_out` here, even computed in float64 (the
# fixture machine's exp/cos of t·freq at t = 999 round otherwise), and that carries into the output.
FORWARD_TOLERANCE = 1e-4
TABLE_TOLERANCE = 2e-7  # a float32 bit or two of values below 1
SAMPLER_TOLERANCE = 2e-4  # 50 steps of CFG up to 7 on outputs up to 8 in magnitude
GUIDANCE, STEPS = 6.0, 50  # the yaml's DynamicCFG(scale=6, exp=5, num_steps=50)


def is_fixture(folder: Path) -> bool:
    """True for a folder of the format of shared/parity_cogvideox (jobs/parity.py picks the checks by it)."""
    return all((folder / name).exists() for name in FILES)


def tiny_network(folder: Path) -> tuple[CogStarNetwork, Check]:
    """The fixture network from the official SAT weights through our key map, and the map checked against
    the fixture's own diffusers conversion."""
    network_state, _ = unwrap_engine(load_file(folder / "tiny_state_dict.safetensors"))
    ours, _ = sat_to_ours(network_state)
    reference = load_file(folder / "tiny_diffusers_state_dict.safetensors")
    if set(ours) != set(reference):
        error = float("inf")
    else:
        error = max(float((ours[k] - reference[k]).abs().max()) for k in reference)
    network = network_from_state(config_from_shapes(ours, position_of(network_state)), ours,
                                 where=f"the weights of {folder}")
    return network, Check("cog.keymap", error, 0.0)


def forward_checks(folder: Path, network: CogStarNetwork) -> list[Check]:
    inputs, outputs = load_file(folder / "tiny_inputs.safetensors"), load_file(folder / "tiny_outputs.safetensors")
    recorded: dict[str, Tensor] = {}
    hook = network.transformer.time_embedding.register_forward_hook(
        lambda module, args, out: recorded.__setitem__("time_embed_out", out))
    with torch.no_grad():
        out = network(inputs["x_noisy"], inputs["lq"], inputs["t"], inputs["context"])
    hook.remove()
    return [compare("cog.forward.output", out, outputs["output"], FORWARD_TOLERANCE),
            compare("cog.forward.time_embed_out", recorded["time_embed_out"], outputs["time_embed_out"],
                    FORWARD_TOLERANCE)]


PairSource = Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]


def _sampler_run(folder: Path, label: str, pairs: PairSource, own_pairs: bool = True) -> list[Check]:
    """Our sampler on the fixture's noise with x̂0 pairs from `pairs`; every call's pair, the solver state
    where recorded (`call.NN.input`: the replay's only check of the update, since its output is the last
    recorded pair guided) and the output compared, and each step's t, a_q and guidance scale with sampler.json."""
    ref, meta = load_file(folder / "sampler.safetensors"), json.loads((folder / "sampler.json").read_text())
    steps, table = sampler_steps(STEPS), denoiser_table()
    calls: list[tuple[Tensor, float, tuple[Tensor, Tensor], float]] = []
    states: list[Tensor] = []

    def denoise(x: Tensor, t: Tensor, alpha: float) -> Tensor:
        scale = dynamic_cfg_scale(GUIDANCE, int(t[0]), STEPS)
        states.append(x)
        pair = pairs(x, t, alpha)
        calls.append((t, alpha, pair, scale))
        return guide(*pair, scale)

    # the official draws twice at steps 1..48 and uses the second: the used draws are 0, 2, 4, ..., 96
    used = [ref[f"sde_noise.{i:03d}"].transpose(1, 2) for i in range(0, meta["num_noise_draws"], 2)]
    with torch.no_grad():
        output = sample_vpsde_dpmpp_2m(denoise, ref["init_noise"].transpose(1, 2), steps, table, replayed_noise(used))
    step_meta = meta["steps"]
    schedule_ok = len(calls) == len(step_meta) and all(
        int(t[0]) == int(m["timestep_idx"]) and abs(alpha - m["alpha_quantized"]) <= TABLE_TOLERANCE
        and abs(scale - m["cfg_scale"]) <= 1e-9 for (t, alpha, _, scale), m in zip(calls, step_meta))
    pair_error = max(float((torch.cat(pair).transpose(1, 2) - ref[f"call.{i:02d}.denoised_uc_c"]).abs().max())
                     for i, (_, _, pair, _) in enumerate(calls))
    recorded_states = sorted(int(k.split(".")[1]) for k in ref if k.endswith(".input"))
    channels = ref["init_noise"].shape[2]
    state_error = max(float((states[i].transpose(1, 2) - ref[f"call.{i:02d}.input"][:1, :, :channels]).abs().max())
                      for i in recorded_states)
    found = [Check(f"cog.sampler.{label}steps (t, a_q, cfg scale)", 0.0 if schedule_ok else float("inf"), 0.0)]
    if own_pairs:  # not when replaying the recorded pairs themselves
        found.append(Check(f"cog.sampler.{label}denoised_uc_c", pair_error, SAMPLER_TOLERANCE))
    return [*found, Check(f"cog.sampler.{label}state (calls {recorded_states})", state_error, SAMPLER_TOLERANCE),
            compare(f"cog.sampler.{label}output", output.transpose(1, 2), ref["output"], SAMPLER_TOLERANCE)]


def sampler_checks(folder: Path, network: CogStarNetwork) -> list[Check]:
    ref = load_file(folder / "sampler.safetensors")
    found = [compare("cog.schedule.denoiser_table", denoiser_table(), ref["schedule.denoiser_alpha_cumprod_sqrt_1000"],
                     TABLE_TOLERANCE),
             compare("cog.schedule.sampler_alphas", sampler_steps(STEPS).alphas,
                     ref["schedule.sampler_alpha_cumprod_sqrt"], TABLE_TOLERANCE)]
    # 1. the recorded x̂0 pairs in call order: the solver and the guidance alone
    recorded = iter(ref[f"call.{i:02d}.denoised_uc_c"].transpose(1, 2) for i in range(STEPS))

    def replay(x: Tensor, t: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        pair = next(recorded)  # (2, C, F, H, W)
        return pair[:1], pair[1:]

    found += _sampler_run(folder, "replay.", replay, own_pairs=False)
    # 2. the tiny network end to end (the LR latent and the prompt as the fixture gives them)
    lr, context = ref["lq"].transpose(1, 2), ref["context"]
    found += _sampler_run(folder, "", lambda x, t, alpha: x0_pair(network, x, t, alpha, context, lr))
    return found


def checks(folder: Path) -> list[Check]:
    """Every check of a shared/parity_cogvideox folder."""
    network, keymap = tiny_network(folder)
    return [keymap, *forward_checks(folder, network), *sampler_checks(folder, network)]
