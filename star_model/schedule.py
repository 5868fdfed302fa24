"""STAR's noise schedule (logSNR cosine-interpolated, zero terminal SNR), the maps between integer
timesteps and k-diffusion sigmas, and the sigma lists the solver walks ("fast" and "normal" modes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

SolverMode = Literal["fast", "normal"]


@dataclass(frozen=True)
class ScheduleConfig:
    """The official `noise_schedule('logsnr_cosine_interp', n=1000, zero_terminal_snr=True, 2, 4)`."""

    num_timesteps: int = 1000
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    scale_min: float = 2.0  # shift used at t=0 (least noise) ...
    scale_max: float = 4.0  # ... interpolated to this shift at t=T-1
    zero_terminal_snr: bool = True


@dataclass(frozen=True)
class NoiseSchedule:
    """The VP schedule as float32 tables indexed by integer t (index 0 = least noise).

    x_t = alpha_t·x0 + sigma_t·eps with alpha² + sigma² = 1. The solver works with the VE
    ("k-diffusion") sigma s_t = sigma_t/alpha_t, which is inf at t = T-1.
    """

    sigmas: Tensor  # (T,) sigma_t
    alphas: Tensor  # (T,) alpha_t = sqrt(1 - sigma_t²)

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.numel()

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = 1 - sigma_t² (the DDPM name for alpha_t²)."""
        return 1 - self.sigmas**2

    @property
    def logsnrs(self) -> Tensor:
        """log(alpha²/sigma²); -inf at the terminal step.

        The official `sigmas_to_logsnrs` returns the opposite sign, log(sigma²/alpha²), despite its name;
        parity compares against `-logsnrs`.
        """
        return -torch.log(self.sigmas**2 / (1 - self.sigmas**2))

    @property
    def k_sigmas(self) -> Tensor:
        """s_t = sigma_t/alpha_t, written sqrt(sigma²/(1-sigma²)) as the official (it is bit-for-bit the
        official table; sigma/alpha differs in the last float32 bit for a few t)."""
        return (self.sigmas**2 / (1 - self.sigmas**2)).sqrt()

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """k-sigma at (possibly fractional) timesteps: log s interpolated linearly between integers."""
        log_s = self.k_sigmas.log()  # (T,), +inf at T-1
        t = t.to(torch.float32)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * log_s[lo] + w * log_s[hi]
        # At t = T-1 the blend is (1-0)·inf + 0·inf = nan; that timestep is pure noise, s = inf.
        log_sigma = torch.where(torch.isnan(log_sigma), torch.full_like(log_sigma, math.inf), log_sigma)
        return log_sigma.exp()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Inverse of `t_to_sigma` (fractional t); clamps to [0, T-2] outside the finite table, and
        s = inf maps to T-1."""
        log_s = self.k_sigmas.log()[:-1]  # (T-1,) finite part, increasing
        sigma = sigma.to(torch.float32)
        flat = sigma.reshape(-1)
        log_sigma = flat.log()
        # lo = last index whose log s is <= log sigma, kept inside [0, T-3] so that hi = lo + 1 exists.
        lo = ((log_sigma[None, :] >= log_s[:, None]).sum(0) - 1).clamp(0, log_s.numel() - 2)  # (N,)
        hi = lo + 1
        w = ((log_s[lo] - log_sigma) / (log_s[lo] - log_s[hi])).clamp(0, 1)
        t = (1 - w) * lo + w * hi
        t = torch.where(torch.isinf(flat) & (flat > 0), torch.full_like(t, self.num_timesteps - 1), t)
        return t.reshape(sigma.shape)

    def model_timestep(self, sigma: Tensor) -> Tensor:
        """The integer timestep the network sees for k-sigma `sigma`: round(sigma_to_t), as int64.

        torch.round is round-half-to-even, as the official (t = 786.5 -> 786 in normal-15 mode)."""
        return self.sigma_to_t(sigma).round().long()


def logsnr_cosine_interp(cfg: ScheduleConfig) -> Tensor:
    """logSNR λ(u) for u = 1 ... 0 (index 0 = least noise), float32 as the official.

    λ_cos(u) = -2·ln tan(a + u·(b - a)), a = atan(e^(-λ_min/2)), b = atan(e^(-λ_max/2));
    shifted by 2·ln(1/scale); interpolated λ = u·λ_{scale_min} + (1-u)·λ_{scale_max}.
    """
    # float32 throughout: the official table is float32 and float64 differs by up to 3e-7 in sigma.
    u = torch.linspace(1, 0, cfg.num_timesteps, dtype=torch.float32)
    a = math.atan(math.exp(-0.5 * cfg.logsnr_min))
    b = math.atan(math.exp(-0.5 * cfg.logsnr_max))
    logsnr_cos = -2 * torch.log(torch.tan(a + u * (b - a)))
    logsnr_lo = logsnr_cos + 2 * math.log(1 / cfg.scale_min)
    logsnr_hi = logsnr_cos + 2 * math.log(1 / cfg.scale_max)
    return u * logsnr_lo + (1 - u) * logsnr_hi


def build_schedule(cfg: ScheduleConfig = ScheduleConfig()) -> NoiseSchedule:
    """The official noise schedule tables (bit-for-bit with the fixture)."""
    sigmas = torch.sigmoid(-logsnr_cosine_interp(cfg)).sqrt()  # (T,) float32
    if cfg.zero_terminal_snr and float(sigmas[-1]) != 1.0:
        # Stretch sigma so that sigma_{T-1} = 1 while sigma_0 is kept. With the default config sigma_{T-1}
        # already rounds to 1.0 in float32, where the stretch is the identity: skipping it keeps the table
        # bit-identical to the official one (applying it in float32 moves two entries by 6e-8).
        lo, hi = sigmas[0], sigmas[-1]
        sigmas = lo + (sigmas - lo) * (1 - lo) / (hi - lo)
    alphas = (1 - sigmas**2).sqrt()
    return NoiseSchedule(sigmas=sigmas, alphas=alphas)


def solver_timesteps(mode: SolverMode, steps: int, t_max: int = 899) -> Tensor:
    """The (fractional) timesteps of the official 'trailing' discretisation, float32, before the
    penultimate one is dropped.

    fast: t_max, t_max-100, ... down to 500, then 11 equal steps from 500 towards -1 (the official
          `arange(500, -1, -501/11)`); `steps` is ignored, as officially.
    normal: N = steps + 1 points t_k = (t_max+1)·(1 - k/N) - 1, k = 0..N-1.
    """
    if mode == "fast":
        t_mid, coarse_stride, fine_count = 500, 100, 11
        if t_max < t_mid:
            raise ValueError(f"fast mode needs t_max >= {t_mid}, got {t_max}; use mode='normal'")
        coarse = [float(t) for t in range(t_max, t_mid - 1, -coarse_stride)]
        fine = [t_mid - k * (t_mid + 1) / fine_count for k in range(fine_count)]
        return torch.tensor(coarse + fine, dtype=torch.float64).to(torch.float32)
    if mode == "normal":
        if steps < 1:
            raise ValueError(f"normal mode needs steps >= 1, got {steps}")
        n = steps + 1
        # Differs from the official on purpose: the official `torch.arange(t_max+1, 0, -(t_max+1)/n)` has a
        # float step and returns n+1 points for some n (42 of n = 1..1000, e.g. steps=94), the extra point
        # being t ≈ -1, which then indexes the inf end of the table. We build exactly n points in float64;
        # the values agree with the official float32 arange to 2e-5 in t.
        ts = [(t_max + 1) * (1 - k / n) - 1 for k in range(n)]
        return torch.tensor(ts, dtype=torch.float64).to(torch.float32)
    raise ValueError(f"unknown solver mode {mode!r}; expected 'fast' or 'normal'")


def solver_sigmas(schedule: NoiseSchedule, mode: SolverMode, steps: int = 15, t_max: int = 899) -> Tensor:
    """The k-sigmas handed to DPM-Solver++(2M) SDE, float32, ending in 0.

    The official drops the penultimate sigma for `dpmpp_2m_sde`, so the solver makes one evaluation fewer
    than there are timesteps: 14 in fast mode, `steps` in normal mode.
    """
    sigmas = schedule.t_to_sigma(solver_timesteps(mode, steps, t_max))  # (N,)
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # (N+1,)
    return torch.cat([sigmas[:-2], sigmas[-1:]])  # (N,): penultimate discarded
