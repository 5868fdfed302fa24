"""CogVideoX's sampler as the official STAR runs it (SAT `VPSDEDPMPP2MSampler`, `ZeroSNRDDPMDiscretization`,
`DiscreteDenoiser` with `VideoScaling`, `DynamicCFG`): v-prediction on a zero-terminal-SNR DDPM schedule,
VP-SDE DPM-Solver++(2M), from pure noise. Separate from the network: it calls a `Denoiser` (x_t, DDPM index
t) -> x̂0, so guidance, windows and tiles live in that callable.

| code            | symbol              | meaning                                                           |
|-----------------|---------------------|-------------------------------------------------------------------|
| `alphas[i]`     | a_i = √ᾱ            | the sampler's table, zero-SNR rescaled over the subsampled steps   |
| `table[t]`      | √ᾱ_t                | the denoiser's 1000-entry table, rescaled over all 1000 steps      |
| `lam`           | λ = log(a/√(1−a²))  | half log-SNR                                                      |
| `h`             | h_i = λ_{i+1} − λ_i | step in λ                                                         |
| `r`             | r_i = h_{i−1}/h_i   | ratio of consecutive steps (the 2M correction)                     |
| `denoised`      | D_i                 | guided x̂0 = a_q·x_t − √(1−a_q²)·v̂                                  |
| `alpha_q`       | a_q                 | the 1000-table entry nearest a_i (the network sees the step's t)  |

One step: x_{i+1} = √((1−a_{i+1}²)/(1−a_i²))·e^{−h}·x_i + (1 − e^{−2h})·a_{i+1}·D'
                    + √(1−a_{i+1}²)·√(1−e^{−2h})·z_i,
with D' = D_0 at i = 0 and D' = (1 + 1/(2r))·D_i − 1/(2r)·D_{i−1} after; the last step returns D.
Two α tables are in play, as in the official code: diffusers' `CogVideoXDPMScheduler` takes the 1000-table
in its update too, up to 6.2e-4 off the official α, which is why the update is ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from star_model.sampler import NoiseSource, seeded_noise

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012  # "scaled_linear": linspace of √β, squared (float64, as official)
# (x_t (B, C, F, H, W), DDPM index t (B,) for the network, a_q for x̂0 = a_q·x_t − √(1−a_q²)·v̂)
# -> guided x̂0
CogDenoiser = Callable[[Tensor, Tensor, float], Tensor]


def _rescale_zero_snr(sqrt_alphas: Tensor) -> Tensor:
    """a <- (a − a_T)·a_0/(a_0 − a_T), a_0 and a_T the first and last entries of the table given."""
    first, last = sqrt_alphas[0], sqrt_alphas[-1]
    return (sqrt_alphas - last) * first / (first - last)


def _alphas_cumprod(snr_shift: float) -> Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return alphas_cumprod / (snr_shift + (1.0 - snr_shift) * alphas_cumprod)  # the SNR shift (2B: 3.0)


def denoiser_table(snr_shift: float = 1.0) -> Tensor:
    """√ᾱ_t for t = 0..999 (float32), rescaled over all 1000 steps: ᾱ_999 = 0."""
    return _rescale_zero_snr(_alphas_cumprod(snr_shift).sqrt()).float()


@dataclass(frozen=True)
class Steps:
    timesteps: list[int]  # DDPM indices the solver visits, descending (999, 979, ..., 19 for 50)
    alphas: Tensor  # (n,) float32 the sampler's a_i at those steps, rescaled over the subsample


def sampler_steps(steps: int, snr_shift: float = 1.0) -> Steps:
    """The official discretization for `steps` steps: np.linspace(999, 0, n, endpoint=False) truncated to
    integers (diffusers' "trailing"), and the zero-SNR rescale taken over those steps only (its a_0 is
    √ᾱ at the smallest t, not at t = 0)."""
    if not 2 <= steps <= NUM_TIMESTEPS:  # one step has no range to rescale over (0/0)
        raise ValueError(f"steps={steps} must be in 2..{NUM_TIMESTEPS}")
    # numpy's own linspace, as the official: its float rounding decides where a truncation lands
    timesteps = np.linspace(NUM_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int).tolist()
    ascending = torch.tensor(timesteps[::-1])
    sqrt_alphas = _rescale_zero_snr(_alphas_cumprod(snr_shift)[ascending].sqrt())
    return Steps(timesteps, sqrt_alphas.flip(0).float())


def quantized_alpha(table: Tensor, alpha: float) -> float:
    """The official denoiser's α for a sampler α: the nearest entry of the 1000-table. It can be the
    entry of the next t (at t = 219 of 50 steps, that of 218), while the network sees the step's own t."""
    return float(table[int((table.double() - alpha).abs().argmin())])


def dynamic_cfg_scale(scale: float, t: int, steps: int, exponent: float = 5.0) -> float:
    """SAT `DynamicCFG`: 1 + scale·(1 − cos(π·((n − t)/n)^exp))/2. The official passes step_index = n − t
    with t the DDPM index, not the step count, so the scale jumps between 1 and 1 + scale from step to step
    (2.29, 2.54, 6.97, ... at n = 50); diffusers' CogVideoXPipeline(use_dynamic_cfg) does the same. Kept:
    the released weights were tuned with it."""
    return 1.0 + scale * (1.0 - math.cos(math.pi * ((steps - t) / steps) ** exponent)) / 2.0


def sample_vpsde_dpmpp_2m(denoise: CogDenoiser, noise_start: Tensor, steps: Steps, table: Tensor,
                          noise: NoiseSource | None = None) -> Tensor:
    """From x = `noise_start` (pure N(0, I) noise, unscaled: a_0 = 0) to the last x̂0, float32.

    `denoise` gets each step's DDPM index and its quantized α. `noise` draws the SDE noise of steps 0..n−2; the
    official draws once more at steps 1..n−2 for an `x_standard` it discards, which we skip (replaying the
    official draws: feed only the used ones, every second from the third).
    """
    noise = noise if noise is not None else seeded_noise(0)
    alphas = [float(a) for a in steps.alphas] + [1.0]  # a_n := 1 closes the last step
    lam = [_half_log_snr(a) for a in alphas]
    batch = noise_start.shape[0]
    x = noise_start.float()  # (B, C, F, H, W)
    denoised_prev: Tensor | None = None
    for i in range(len(steps.timesteps)):
        t = torch.full((batch,), steps.timesteps[i], dtype=torch.long, device=x.device)
        denoised = denoise(x, t, quantized_alpha(table, alphas[i])).float()
        if i == len(steps.timesteps) - 1:
            return denoised  # the official's last step returns D
        a, a_next = alphas[i], alphas[i + 1]
        h = lam[i + 1] - lam[i]  # +inf at i = 0 (a_0 = 0), where e^{-h} = 0 makes the step exact
        e_h = math.exp(-h)
        one_minus_e2h = -math.expm1(-2.0 * h)
        guess = denoised
        if denoised_prev is not None:
            r = (lam[i] - lam[i - 1]) / h
            guess = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * denoised_prev
        mult1 = math.sqrt((1.0 - a_next**2) / (1.0 - a**2)) * e_h
        sigma = math.sqrt(1.0 - a_next**2) * math.sqrt(one_minus_e2h)
        x = mult1 * x + one_minus_e2h * a_next * guess + sigma * noise(x)
        denoised_prev = denoised
    raise AssertionError("unreachable: the last step returns")


def _half_log_snr(a: float) -> float:
    if a <= 0.0:
        return -math.inf
    if a >= 1.0:
        return math.inf
    return math.log(a / math.sqrt(1.0 - a * a))
