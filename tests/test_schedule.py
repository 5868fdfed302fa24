"""The noise schedule, the timestep <-> k-sigma maps and the solver sigma lists, against the official
fixtures (shared/parity/schedule.*) and by their defining properties."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import parity
from star_model.parity.sampling import official_schedule
from star_model.schedule import ScheduleConfig, build_schedule, solver_sigmas, solver_timesteps

SCHEDULE = build_schedule()
# The derived maps are checked on the fixture's own tables: near sigma = 1 the last float32 bit of a
# table entry, which varies with the machine's libm, is amplified to ~1e-4 (see `official_schedule`).
OFFICIAL = official_schedule(parity("schedule.safetensors").parent)


def assert_close_with_inf(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), finite)
    assert torch.equal(ours[~finite], ref[~finite])
    # k-sigmas reach 1e3: the bound is relative there (a float32 bit of 1e3 is 1.2e-4), as `compare_scaled`.
    torch.testing.assert_close(ours[finite], ref[finite], atol=atol, rtol=atol)


def test_tables_match_official() -> None:
    ref = load_file(parity("schedule.safetensors"))
    torch.testing.assert_close(SCHEDULE.sigmas, ref["sigmas"], atol=2e-5, rtol=0)
    torch.testing.assert_close(SCHEDULE.alphas, ref["alphas"], atol=2e-5, rtol=0)
    torch.testing.assert_close(SCHEDULE.alphas_cumprod, ref["alphas_cumprod"], atol=2e-5, rtol=0)
    assert_close_with_inf(-OFFICIAL.logsnrs, ref["logsnrs"], 2e-5)  # official sign: log(sigma²/alpha²)
    assert_close_with_inf(OFFICIAL.k_sigmas, ref["k_sigmas"], 2e-5)
    plain = build_schedule(ScheduleConfig(zero_terminal_snr=False))
    torch.testing.assert_close(plain.sigmas, ref["sigmas_before_zero_terminal_snr"], atol=2e-5, rtol=0)


def test_timestep_sigma_maps_match_official() -> None:
    ref = load_file(parity("schedule.safetensors"))
    assert_close_with_inf(OFFICIAL.t_to_sigma(ref["t_to_sigma.t"]), ref["t_to_sigma.sigma"], 2e-5)
    # t up to 999: one float32 bit is 6e-5, so the bound is relative there.
    torch.testing.assert_close(OFFICIAL.sigma_to_t(ref["sigma_to_t.sigma"]), ref["sigma_to_t.t"], atol=2e-5,
                               rtol=2e-5)


def test_solver_sigmas_and_model_timesteps_match_official() -> None:
    ref = load_file(parity("schedule.safetensors"))
    modes = json.loads((parity("schedule.json")).read_text())["sampling_schedules"]
    assert modes, "schedule.json lists no sampling schedule"
    for label, meta in modes.items():
        sigmas = solver_sigmas(OFFICIAL, meta["solver_mode"], meta["steps_arg"], meta["t_max"])
        torch.testing.assert_close(sigmas, ref[f"solver_sigmas.{label}"], atol=2e-5, rtol=0)
        assert SCHEDULE.model_timestep(solver_sigmas(SCHEDULE, meta["solver_mode"], meta["steps_arg"],
                                                     meta["t_max"])[:-1]).tolist() == meta["model_timesteps"]
        assert OFFICIAL.model_timestep(sigmas[:-1]).tolist() == meta["model_timesteps"], label


def test_schedule_shape() -> None:
    sigmas = SCHEDULE.sigmas
    assert sigmas.dtype == torch.float32 and sigmas.shape == (1000,)
    assert bool((sigmas[1:] > sigmas[:-1]).all())  # index 0 = least noise
    assert float(sigmas[-1]) == 1.0 and float(SCHEDULE.alphas[-1]) == 0.0  # zero terminal SNR
    # Reference values quoted in star_official.md §2.7.
    assert float(sigmas[0]) == pytest.approx(0.001106, abs=1e-6)
    assert float(sigmas[500]) == pytest.approx(0.94301, abs=1e-5)
    assert float(SCHEDULE.alphas[899]) == pytest.approx(0.042566, abs=1e-6)
    assert float(SCHEDULE.t_to_sigma(torch.tensor([899]))) == pytest.approx(23.4717, abs=1e-4)


def test_sigma_to_t_inverts_t_to_sigma() -> None:
    t = torch.linspace(0, 998, 397)
    torch.testing.assert_close(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(t)), t, atol=2e-3, rtol=0)
    ends = SCHEDULE.sigma_to_t(torch.tensor([0.0, float("inf"), 1e6]))
    assert ends.tolist() == [0.0, 999.0, 998.0]


def test_fast_mode_is_the_official_14_evaluations() -> None:
    t = solver_timesteps("fast", steps=15)
    assert [round(v, 2) for v in t.tolist()] == [899, 799, 699, 599, 500, 454.45, 408.91, 363.36, 317.82,
                                                 272.27, 226.73, 181.18, 135.64, 90.09, 44.55]
    sigmas = solver_sigmas(SCHEDULE, "fast", steps=3)  # steps is ignored in fast mode
    assert sigmas.numel() == 15 and float(sigmas[-1]) == 0.0
    assert SCHEDULE.model_timestep(sigmas[:-1]).tolist() == [899, 799, 699, 599, 500, 454, 409, 363, 318,
                                                             272, 227, 181, 136, 90]


@pytest.mark.parametrize("steps", [1, 2, 7, 15, 50, 94, 95, 199, 500])
def test_normal_mode_makes_exactly_steps_evaluations(steps: int) -> None:
    # The official float-step arange gives one point too many for some step counts (e.g. 94); ours never.
    sigmas = solver_sigmas(SCHEDULE, "normal", steps)
    assert sigmas.numel() == steps + 1
    assert float(sigmas[-1]) == 0.0 and bool(torch.isfinite(sigmas).all())
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) == pytest.approx(float(SCHEDULE.t_to_sigma(torch.tensor([899]))))


def test_bad_solver_settings_raise() -> None:
    with pytest.raises(ValueError, match="solver mode"):
        solver_sigmas(SCHEDULE, "slow", 15)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps >= 1"):
        solver_sigmas(SCHEDULE, "normal", 0)
    with pytest.raises(ValueError, match="t_max"):
        solver_sigmas(SCHEDULE, "fast", 15, t_max=400)
