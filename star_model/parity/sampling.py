"""Parity of everything around the network: schedule, v-prediction maths, guidance, the solver (replayed
network outputs, and the tiny network when given), temporal chunks, padding and colour fix."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from star_model.colorfix import adain_color_fix, wavelet_color_fix
from star_model.diffusion import Denoiser, diffuse, get_velocity, guided_x0, sinusoidal_embedding, x0_from_v
from star_model.parity import Check, compare, compare_scaled
from star_model.sampler import replayed_noise, sample_dpmpp_2m_sde, sdedit_start
from star_model.schedule import NoiseSchedule, ScheduleConfig, build_schedule, solver_sigmas
from star_model.padding import official_pad_to_fit
from star_model.latent_windows import latent_window_denoiser, official_chunks

TOLERANCE = 2e-5
SAMPLER_TOLERANCE = 2e-4  # multi-step: float error grows through CFG 7.5 (README: 1e-4 between thread counts)
# diffusion_ops.safetensors has no metadata; its `denoise` calls used the official defaults (README §4).
OFFICIAL_GUIDE_SCALE, OFFICIAL_GUIDE_RESCALE = 7.5, 0.2


def _exact(name: str, ok: bool) -> Check:
    """A pass/fail comparison (integer lists, windows) reported as error 0 or inf."""
    return Check(name, 0.0 if ok else float("inf"), 0.0)


def _compare_with_inf(name: str, ours: Tensor, official: Tensor, tolerance: float) -> Check:
    """`compare_scaled` on the finite entries (k-sigmas reach 1e3); infinite entries must sit at the same
    places with the same sign."""
    finite = torch.isfinite(official)
    if tuple(ours.shape) != tuple(official.shape) or not torch.equal(torch.isfinite(ours), finite):
        return Check(name, float("inf"), tolerance)
    if not torch.equal(ours[~finite], official[~finite]):
        return Check(name, float("inf"), tolerance)
    return compare_scaled(name, ours[finite], official[finite], tolerance)


def _schedule_config(folder: Path) -> ScheduleConfig:
    meta_file = folder / "schedule.json"
    if not meta_file.exists():
        return ScheduleConfig()
    kwargs = json.loads(meta_file.read_text())["noise_schedule_kwargs"]
    if kwargs.get("schedule", "logsnr_cosine_interp") != "logsnr_cosine_interp":
        raise ValueError(f"only the 'logsnr_cosine_interp' schedule is implemented, got {kwargs['schedule']!r}")
    return ScheduleConfig(
        num_timesteps=int(kwargs.get("n", 1000)),
        scale_min=float(kwargs.get("scale_min", 2.0)),
        scale_max=float(kwargs.get("scale_max", 4.0)),
        zero_terminal_snr=bool(kwargs.get("zero_terminal_snr", True)),
    )


def official_schedule(folder: Path) -> NoiseSchedule:
    """The fixture's own sigma/alpha tables as a schedule.

    Our tables agree with the official ones to the last float32 bit or so, and which entries differ
    depends on the machine's tan/log/sigmoid (the fixture README: torch 2.13.0+cpu on another CPU). Near
    sigma = 1, 1 - sigma² cancels, so one such bit becomes ~1e-4 in logSNR, k-sigma, sigma_to_t and in
    the v-prediction maths at t = 0. The checks of those formulas therefore run on the official tables,
    and the tables themselves are compared on their own (`schedule_checks`)."""
    ref = load_file(folder / "schedule.safetensors")
    return NoiseSchedule(sigmas=ref["sigmas"], alphas=ref["alphas"])


def schedule_checks(folder: Path, schedule: NoiseSchedule, cfg: ScheduleConfig) -> list[Check]:
    """Our tables against the official ones, then every formula derived from them on the official tables."""
    ref = load_file(folder / "schedule.safetensors")
    official = official_schedule(folder)
    found = [
        compare("schedule.sigmas", schedule.sigmas, ref["sigmas"], TOLERANCE),
        compare("schedule.alphas", schedule.alphas, ref["alphas"], TOLERANCE),
        compare("schedule.alphas_cumprod", schedule.alphas_cumprod, ref["alphas_cumprod"], TOLERANCE),
        # The official `sigmas_to_logsnrs` returns log(sigma²/alpha²), the negative of a logSNR.
        _compare_with_inf("schedule.logsnrs", -official.logsnrs, ref["logsnrs"], TOLERANCE),
        _compare_with_inf("schedule.k_sigmas", official.k_sigmas, ref["k_sigmas"], TOLERANCE),
        _compare_with_inf("schedule.t_to_sigma", official.t_to_sigma(ref["t_to_sigma.t"]),
                          ref["t_to_sigma.sigma"], TOLERANCE),
        compare_scaled("schedule.sigma_to_t", official.sigma_to_t(ref["sigma_to_t.sigma"]), ref["sigma_to_t.t"],
                       TOLERANCE),  # t up to 999: one float32 bit is 6e-5
    ]
    if "sigmas_before_zero_terminal_snr" in ref:
        plain = build_schedule(ScheduleConfig(**{**cfg.__dict__, "zero_terminal_snr": False}))
        found.append(compare("schedule.sigmas_before_zero_terminal_snr", plain.sigmas,
                             ref["sigmas_before_zero_terminal_snr"], TOLERANCE))
    meta_file = folder / "schedule.json"
    modes = json.loads(meta_file.read_text())["sampling_schedules"] if meta_file.exists() else {}
    for key in sorted(k for k in ref if k.startswith("solver_sigmas.")):
        label = key.removeprefix("solver_sigmas.")
        if label in modes:
            mode, steps, t_max = modes[label]["solver_mode"], modes[label]["steps_arg"], modes[label]["t_max"]
        else:  # no json: the key names the mode, "fast" or "normal_<steps>", at the official t_max
            match = re.fullmatch(r"(fast|normal)(?:_(\d+))?", label)
            if match is None:
                raise ValueError(f"cannot tell the solver mode of {key}; add it to schedule.json")
            mode, steps, t_max = match[1], int(match[2] or 15), 899
        sigmas = solver_sigmas(official, mode, steps, t_max)
        found.append(compare(f"schedule.{key}", sigmas, ref[key], TOLERANCE))
        if label in modes:
            timesteps = official.model_timestep(sigmas[:-1]).tolist()
            found.append(_exact(f"schedule.model_timesteps.{label}", timesteps == modes[label]["model_timesteps"]))
    return found


def diffusion_checks(folder: Path, schedule: NoiseSchedule) -> list[Check]:
    ref = load_file(folder / "diffusion_ops.safetensors")
    t = ref["t"]
    found = [
        compare("diffusion.diffuse", diffuse(schedule, ref["x0"], t, ref["noise"]), ref["xt"], TOLERANCE),
        compare("diffusion.velocity", get_velocity(schedule, ref["x0"], ref["xt"], t), ref["velocity"], TOLERANCE),
        compare("diffusion.x0_from_v", x0_from_v(schedule, ref["xt"], ref["v_in"], t), ref["x0_from_v_in"], TOLERANCE),
    ]
    cond, uncond = ref["denoise.cond_out"], ref["denoise.uncond_out"]

    def fake_model(x: Tensor, t: Tensor, y: Tensor, *, hint: Tensor) -> Tensor:
        return torch.cat([cond, uncond])  # the batched call: cond half first, then uncond

    for key in sorted(k for k in ref if re.fullmatch(r"denoise\.t\d+\.x0", k)):
        step = int(key.split(".")[1][1:])
        xt = ref[f"denoise.t{step}.xt"]
        steps = torch.full((xt.shape[0],), step, dtype=torch.long)
        none = torch.zeros(0)
        x0 = guided_x0(fake_model, schedule, xt, steps, none, none, none,
                       OFFICIAL_GUIDE_SCALE, OFFICIAL_GUIDE_RESCALE)
        found.append(compare(f"diffusion.denoise.t{step}.x0", x0, ref[key], TOLERANCE))
    for key in sorted(k for k in ref if re.fullmatch(r"sinusoidal\.dim\d+", k)):
        dim = int(key.removeprefix("sinusoidal.dim"))
        found.append(compare(f"diffusion.{key}", sinusoidal_embedding(ref["sinusoidal.t"], dim), ref[key], TOLERANCE))
    return found


def colorfix_checks(folder: Path) -> list[Check]:
    ref = load_file(folder / "colorfix.safetensors")
    found = []
    for name, fix in (("adain", adain_color_fix), ("wavelet", wavelet_color_fix)):
        if f"{name}.output" in ref:
            ours = fix(ref[f"{name}.target"], ref[f"{name}.source"])
            found.append(compare_scaled(f"colorfix.{name}", ours, ref[f"{name}.output"], TOLERANCE))  # 0..255
    return found


def helpers_checks(folder: Path) -> list[Check]:
    ref = json.loads((folder / "helpers.json").read_text())
    found = []
    if "pad_to_fit" in ref:
        sizes = {tuple(map(int, k.split("x"))): v for k, v in ref["pad_to_fit"].items()}
        ok = all(list(official_pad_to_fit(h, w)) == pad for (h, w), pad in sizes.items())
        found.append(_exact(f"helpers.pad_to_fit ({len(sizes)} sizes)", ok))
    if "make_chunks" in ref:
        cases = {tuple(map(int, re.fullmatch(r"f(\d+)_max(\d+)", k).groups())): v  # type: ignore[union-attr]
                 for k, v in ref["make_chunks"].items()}
        ok = all(official_chunks(f, max_len) == [tuple(w) for w in windows] for (f, max_len), windows in cases.items())
        found.append(_exact(f"helpers.make_chunks ({len(cases)} cases)", ok))
    return found


class _Recorder:
    """Wraps a denoiser (whole clip or one window), keeping each call's (network input, t, x̂0)."""

    def __init__(self, denoise: Callable[..., Tensor]) -> None:
        self.denoise = denoise
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def __call__(self, xt: Tensor, t: Tensor, *rest: object) -> Tensor:
        x0 = self.denoise(xt, t, *rest)
        self.calls.append((xt, t, x0))
        return x0


def replay_model(ref: dict[str, Tensor], meta: dict) -> tuple[Callable[..., Tensor], list[str]]:
    """A stand-in network returning the recorded outputs in call order; logs calls whose t or frames
    differ from the recorded ones."""
    outputs: Iterator[Tensor] = iter(ref[f"model_call.{i:03d}.out"] for i in range(len(meta["model_calls"])))
    expected = iter(meta["model_calls"])
    mismatches: list[str] = []

    def model(x: Tensor, t: Tensor, y: Tensor, *, hint: Tensor) -> Tensor:
        half = x.shape[0] // 2
        for row, t_row in enumerate(t.tolist()):
            call = next(expected, None)
            wanted_cond = "y" if row < half else "negative_y"
            if call is None or call["t"] != [t_row] or call["frames"] != x.shape[2] or call["cond"] != wanted_cond:
                mismatches.append(f"call t={t_row} frames={x.shape[2]} expected {call}")
        recorded = [next(outputs, None) for _ in range(x.shape[0])]
        if any(out is None for out in recorded):
            mismatches.append(f"call t={t.tolist()} beyond the {len(meta['model_calls'])} recorded calls")
            return torch.zeros_like(x)
        return torch.cat(recorded)  # type: ignore[arg-type]

    return model, mismatches


def _run_sampler(folder: Path, name: str, schedule: NoiseSchedule, model: Callable[..., Tensor] | None,
                 label: str) -> tuple[list[Check], list[str]]:
    ref = load_file(folder / f"{name}.safetensors")
    meta = json.loads((folder / f"{name}.json").read_text())
    if meta["solver"] != "dpmpp_2m_sde" or meta["discretization"] != "trailing" or meta["t_min"] != 0:
        raise ValueError(f"{name}: only dpmpp_2m_sde, 'trailing', t_min=0 are implemented; got {meta['solver']}, "
                         f"{meta['discretization']}, t_min={meta['t_min']}")
    mismatches: list[str] = []
    if model is None:
        model, mismatches = replay_model(ref, meta)
    y, negative_y, hint = ref["y"], ref["negative_y"], ref["latent_lr"]
    scale, rescale = meta["guide_scale"], meta["guide_rescale"]
    t_start = meta["total_noise_levels"] - 1

    # The official chunks only when F > max_chunk_len, and merges by hard cut. The run uses the recorded
    # windows, so that a wrong `official_chunks` fails its own check and not every later one.
    frames, max_len = hint.shape[2], meta["max_chunk_len"]
    planned = official_chunks(frames, max_len) if frames > max_len else None
    windows = [(int(a), int(b)) for a, b in meta["chunk_inds"]] if meta["chunk_inds"] is not None else None
    found = [_exact(f"{name}.{label}chunks", planned == windows)]
    # The fixture records one `denoise` per window and step, so we record at the same place.
    if windows is None:
        recorder = _Recorder(lambda xt, t: guided_x0(model, schedule, xt, t, y, negative_y, hint, scale, rescale))
        denoise: Denoiser = recorder
    else:
        recorder = _Recorder(lambda xt, t, frames_: guided_x0(model, schedule, xt, t, y, negative_y,
                                                              hint[:, :, frames_], scale, rescale))
        denoise = latent_window_denoiser(recorder, windows, mode="hard_cut")

    start = sdedit_start(schedule, ref["latent_lr"], ref["diffuse_noise"], t_start)
    sigmas = solver_sigmas(schedule, meta["solver_mode"], meta["steps_arg"], meta["t_max"])
    draws = [ref[f"sde_noise.{i:02d}"] for i in range(len(meta["sde_noise_draws"]))]
    with torch.no_grad():
        output = sample_dpmpp_2m_sde(denoise, start, sigmas, schedule, replayed_noise(draws))

    found.append(compare(f"{name}.{label}start", start, ref["noised_lr"], TOLERANCE))
    n_calls = len(meta["denoise_calls"])
    ok_t = len(recorder.calls) == n_calls and all(
        torch.equal(t, ref[f"denoise.{i:02d}.t"]) for i, (_, t, _) in enumerate(recorder.calls))
    found.append(_exact(f"{name}.{label}denoise.t ({n_calls} calls)", ok_t))
    if ok_t:
        for part, index in (("xt", 0), ("x0", 2)):
            errors = [compare(name, call[index], ref[f"denoise.{i:02d}.{part}"], SAMPLER_TOLERANCE)
                      for i, call in enumerate(recorder.calls)]
            found.append(Check(f"{name}.{label}denoise.{part}", max(c.max_abs_error for c in errors),
                               SAMPLER_TOLERANCE))
    found.append(compare(f"{name}.{label}output", output, ref["output"], SAMPLER_TOLERANCE))
    return found, mismatches


def sampler_checks(folder: Path, schedule: NoiseSchedule, denoiser: torch.nn.Module | None) -> list[Check]:
    found: list[Check] = []
    for meta_file in sorted(folder.glob("sampler_*.json")):
        name = meta_file.stem
        if not (folder / f"{name}.safetensors").exists():
            continue
        # 1. Replayed network outputs: checks the solver, guidance, chunk merge and timesteps alone.
        replay, mismatches = _run_sampler(folder, name, schedule, None, "replay.")
        replay.append(_exact(f"{name}.replay.model_calls", not mismatches))
        found += replay
        # 2. The tiny network end to end.
        if denoiser is not None:
            found += _run_sampler(folder, name, schedule, denoiser, "")[0]
    return found


def checks(folder: Path, denoiser: torch.nn.Module | None) -> list[Check]:
    """Every non-network check whose fixture files are in `folder`; the sampler fixtures also run the
    given `denoiser` (the tiny fixture network, called `model(x, t, y, hint=hint)`) when there is one."""
    cfg = _schedule_config(folder)
    found: list[Check] = []
    schedule = build_schedule(cfg)
    if (folder / "schedule.safetensors").exists():
        found += schedule_checks(folder, schedule, cfg)
        schedule = official_schedule(folder)  # the maths below is checked on the official tables
    if (folder / "diffusion_ops.safetensors").exists():
        found += diffusion_checks(folder, schedule)
    if (folder / "colorfix.safetensors").exists():
        found += colorfix_checks(folder)
    if (folder / "helpers.json").exists():
        found += helpers_checks(folder)
    found += sampler_checks(folder, schedule, denoiser)
    return found
