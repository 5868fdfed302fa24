"""The v-prediction maths of STAR (forward process, velocity, x0 from v), classifier-free guidance with
rescale, the guided denoiser the sampler calls, and the sinusoidal timestep embedding of the network."""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from star_model.schedule import NoiseSchedule
from star_model.transfer import to_device

# (x_t in VP scale (B, C, F, H, W), integer t (B,)) -> x0 prediction, same shape as x_t.
Denoiser = Callable[[Tensor, Tensor], Tensor]


class VelocityNetwork(Protocol):
    """The STAR network's call: v = model(x (B,4,F,H,W), t int64 (B,), y (B,L,ctx), hint=(B,4,F,H,W))."""

    def __call__(self, x: Tensor, t: Tensor, y: Tensor, *, hint: Tensor) -> Tensor: ...


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """`cat[cos(t·ω_i), sin(t·ω_i)]` with ω_i = 10000^(-i/half), i < half = dim//2; (N,) -> (N, dim).

    The order is cos first, as the official code (most diffusion code puts sin first). An odd `dim`
    gets a zero column at the end. Computed in float32 whatever the dtype of `t` (int64 timesteps).
    """
    half = dim // 2
    # float32 throughout, as the official: computing the frequencies in float64 changes the last bits.
    t_f32 = t.to(torch.float32)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float32, device=t.device).div(half))
    angles = torch.outer(t_f32, freqs)  # (N, half)
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # (N, 2·half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)  # (N, dim)
    return emb


def _per_sample(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] shaped (B, 1, ..., 1) to broadcast against `like` (B, ...), on like's device and dtype."""
    values = to_device(table, like.device)[to_device(t, like.device).long()]  # (B,)
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def diffuse(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """q(x_t | x0): x_t = alpha_t·x0 + sigma_t·eps (VP). Also the SDEdit start from the LR latent."""
    return _per_sample(schedule.alphas, t, x0) * x0 + _per_sample(schedule.sigmas, t, x0) * noise


def get_velocity(schedule: NoiseSchedule, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
    """The v target, written (alpha_t·x_t - x0)/sigma_t as the official.

    Equal to alpha_t·eps - sigma_t·x0 in exact arithmetic; the division by sigma_t (0.0011 at t=0)
    amplifies the float32 error of x_t, so the eps form differs from the official by 3e-4 at t=0.
    """
    return (_per_sample(schedule.alphas, t, xt) * xt - x0) / _per_sample(schedule.sigmas, t, xt)


def x0_from_v(schedule: NoiseSchedule, xt: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """x̂0 = alpha_t·x_t - sigma_t·v̂ (not clamped, as the official)."""
    return _per_sample(schedule.alphas, t, xt) * xt - _per_sample(schedule.sigmas, t, xt) * v


def predicts_residual(model: VelocityNetwork) -> bool:
    """True for a network whose output is x̂0 - hint (`DenoiserConfig.prediction`); stand-ins without a
    config predict v."""
    return getattr(getattr(model, "cfg", None), "prediction", "v") == "residual"


def velocity(model: VelocityNetwork, schedule: NoiseSchedule, out: Tensor, xt: Tensor, t: Tensor,
             hint: Tensor) -> Tensor:
    """The network's output `out` as v: itself for a v-prediction network (official); for a "residual"
    one (nano, ours) x̂0 = hint + out, so v = (alpha_t·x_t - x̂0)/sigma_t (`get_velocity`)."""
    if not predicts_residual(model):
        return out
    return get_velocity(schedule, hint.float() + out.float(), xt.float(), t)


def guide(v_cond: Tensor, v_uncond: Tensor, guide_scale: float = 7.5, guide_rescale: float = 0.2) -> Tensor:
    """Classifier-free guidance with rescale (Lin et al. 2023 §3.4), as the official `denoise`.

    v = u + g·(c - u), then v ← v·(r·std(c)/(std(v) + 1e-12) + (1 - r)); std is per sample over all
    other dims, unbiased (torch's default), as the official.
    """
    v = v_uncond + guide_scale * (v_cond - v_uncond)
    if guide_rescale > 0:
        dims = tuple(range(1, v.ndim))
        ratio = v_cond.std(dim=dims, keepdim=True) / (v.std(dim=dims, keepdim=True) + 1e-12)
        v = v * (guide_rescale * ratio + (1 - guide_rescale))
    return v


def guided_x0(
    model: VelocityNetwork,
    schedule: NoiseSchedule,
    xt: Tensor,
    t: Tensor,
    y_cond: Tensor,
    y_uncond: Tensor,
    hint: Tensor,
    guide_scale: float = 7.5,
    guide_rescale: float = 0.2,
) -> Tensor:
    """x̂0 from one network forward on a batch of 2B (cond first, then uncond), guided and rescaled.

    Differs from the official on purpose: the official makes two separate forward passes (cond, then
    uncond); one batched pass is faster on a GPU and agrees to float error. xt (B, 4, F, H, W) is the
    VP network input, t (B,) int64; `hint` is the clean LR latent (B, 4, F, H, W), given to both halves
    (no noise augmentation, as the official); `y_*` are the text contexts (B, L, ctx).

    With guide_scale 1 and no rescale, guidance is the conditional velocity itself, so the unconditional
    half is not computed (nano restores so).
    """
    if guide_scale == 1.0 and guide_rescale == 0.0:
        out = model(xt, t, y_cond, hint=hint).float()
        if predicts_residual(model):
            return hint.float() + out  # exactly x̂0, not through v and back
        return x0_from_v(schedule, xt.float(), out, t)
    batch = xt.shape[0]
    xt_both, t_both, hint_both = torch.cat([xt, xt]), torch.cat([t, t]), torch.cat([hint, hint])  # (2B, ...)
    out_both = model(xt_both, t_both, torch.cat([y_cond, y_uncond]), hint=hint_both)  # contexts (2B, L, ctx)
    # Guidance and x0 in float32 even if the network ran in half precision: the rescale divides stds.
    v_both = velocity(model, schedule, out_both, xt_both, t_both, hint_both)
    v = guide(v_both[:batch].float(), v_both[batch:].float(), guide_scale, guide_rescale)
    return x0_from_v(schedule, xt.float(), v, t)
