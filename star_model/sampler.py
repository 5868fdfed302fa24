"""DPM-Solver++(2M) SDE, the sampler of the official STAR inference, in the k-diffusion (VE sigma) form.

It is separate from the network: it calls a `Denoiser` (VP x_t, integer t) -> x̂0, so guidance, temporal
windows and spatial tiles live inside that callable.

Paper symbols (Lu et al. 2022, "DPM-Solver++", §4 and App. B; Karras et al. 2022 VE sigmas):

| code          | symbol                 | meaning                                                   |
|---------------|------------------------|-----------------------------------------------------------|
| `sigmas[i]`   | σ_i = σ_t/α_t          | VE ("k-diffusion") noise level; 0 at the end              |
| `x`           | x_i = x_t/α_t          | VE solver state (the official starts it as x_t·σ_0, below)|
| `c_in`        | 1/√(σ_i²+1) = α_t      | maps the VE state back to the VP network input x_t        |
| `t`           | round(t(σ_i))          | integer timestep given to the network                     |
| `denoised`    | D_i = x̂_θ(x_t, t)      | data prediction                                           |
| `lam`         | λ_i = -ln σ_i          | half log-SNR                                              |
| `h`           | h_i = λ_{i+1} - λ_i    | step size in λ                                            |
| `r`           | r_i = h_{i-1}/h_i      | ratio of consecutive steps (2M correction)                |
| `z`           | z_i ~ N(0, I)          | fresh noise of the stochastic step (η = 1)                |

One step, η = 1, midpoint second-order correction (k-diffusion `sample_dpmpp_2m_sde`):
    x_{i+1} = (σ_{i+1}/σ_i)·e^{-h}·x_i + (1 - e^{-2h})·D_i
              + [i > 0] ½·(1 - e^{-2h})·(1/r)·(D_i - D_{i-1})
              + σ_{i+1}·√(1 - e^{-2h})·z_i
and the step into σ = 0 returns D_i.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from star_model.diffusion import Denoiser, diffuse
from star_model.schedule import NoiseSchedule
from star_model.transfer import to_device

# Given the solver state (for shape, device, dtype), returns z ~ N(0, I) of the same shape.
NoiseSource = Callable[[Tensor], Tensor]


def seeded_noise(seed: int) -> NoiseSource:
    """N(0, 1) draws from a CPU `torch.Generator`, one per stochastic step, moved to the state's device.

    Differs from the official on purpose: the official draws from a torchsde BrownianTree seeded from the
    global RNG (a CUDA-order-dependent stream). A CPU generator gives the same noise on every machine, at
    the cost of one host-to-device copy per step (a few MB).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(like: Tensor) -> Tensor:
        z = torch.randn(like.shape, generator=generator, dtype=torch.float32)
        return to_device(z, like.device, like.dtype)

    return draw


def replayed_noise(draws: Sequence[Tensor]) -> NoiseSource:
    """Replays given draws in order (parity: the recorded `sde_noise.NN`, already divided by √|Δ|)."""
    remaining: Iterator[Tensor] = iter(draws)

    def draw(like: Tensor) -> Tensor:
        z = next(remaining, None)
        if z is None:
            raise ValueError(f"replayed_noise ran out after {len(draws)} draws; the sigma list needs more")
        if z.shape != like.shape:
            raise ValueError(f"replayed noise has shape {tuple(z.shape)}, the state {tuple(like.shape)}")
        return z.to(device=like.device, dtype=like.dtype)

    return draw


def sample_dpmpp_2m_sde(
    denoise: Denoiser,
    x_start: Tensor,
    sigmas: Tensor,
    schedule: NoiseSchedule,
    noise: NoiseSource | None = None,
) -> Tensor:
    """Runs the solver from the VP latent `x_start` (B, C, F, H, W) at k-sigma `sigmas[0]` down to 0.

    `sigmas` (n+1,) ends in 0 (see `schedule.solver_sigmas`): n denoiser calls, n-1 noise draws.
    `noise` defaults to `seeded_noise(0)`. Returns the last x̂0, float32.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must be 1-D, at least 2 long and end in 0; got {sigmas.tolist()}")
    noise = noise if noise is not None else seeded_noise(0)
    # Step coefficients in float64 Python floats from the float32 sigmas; they differ from the
    # official float32 tensor arithmetic by ~1e-7 relative, far below the sampler's tolerance.
    sigma_list = [float(s) for s in sigmas]
    batch = x_start.shape[0]

    # 1. Start state. Follows the official quirk: the VP sample x_t is multiplied by σ_0 rather than
    #    divided by α_0, so the first network input is x_t·σ_t (0.99909·x_t at t = 899), not x_t.
    x = x_start.float() * sigma_list[0]  # (B, C, F, H, W) float32
    denoised_prev: Tensor | None = None
    h_prev: float | None = None

    for i, (sigma, sigma_next) in enumerate(zip(sigma_list[:-1], sigma_list[1:])):
        # 2. Denoise at σ_i: the network sees the VP input x·c_in at the rounded integer timestep.
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        t = to_device(schedule.model_timestep(torch.tensor([sigma])), x.device).expand(batch)  # (B,) int64
        denoised = denoise(x * c_in, t).float()
        if sigma_next == 0.0:
            return denoised  # 3. The last step lands on σ = 0: x_n = D_{n-1}.

        # 4. DPM-Solver++(2M) SDE step, η = 1.
        h = math.log(sigma) - math.log(sigma_next)  # λ_{i+1} - λ_i with λ = -ln σ
        one_minus_e2h = -math.expm1(-2.0 * h)  # 1 - e^{-2h}, exact for small h
        x = (sigma_next / sigma) * math.exp(-h) * x + one_minus_e2h * denoised
        if denoised_prev is not None and h_prev is not None:
            r = h_prev / h
            x = x + 0.5 * one_minus_e2h * (1.0 / r) * (denoised - denoised_prev)
        x = x + noise(x) * (sigma_next * math.sqrt(one_minus_e2h))
        denoised_prev, h_prev = denoised, h

    raise AssertionError("unreachable: sigmas end in 0")


def sdedit_start(schedule: NoiseSchedule, z_lr: Tensor, eps: Tensor, t_start: int = 899) -> Tensor:
    """The official start latent: the LR latent diffused to t_start, alpha·z + sigma·eps (VP)."""
    t = torch.full((z_lr.shape[0],), t_start, dtype=torch.long)
    return diffuse(schedule, z_lr, t, eps)
