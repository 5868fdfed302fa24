"""The fine-tuning loss of STAR: v-prediction MSE plus the timestep-aware Dynamic Frequency (DF) loss
(paper Sec. 3.3), in two modes.

    L = mean_b [ L_v(b) + b(t_b)·L_DF(b) ],   L_DF = c(t)·L_low + (1 - c(t))·L_high
    c(t) = (t / t_max)^alpha   (alpha = 2)     b(t) = beta·(1 - t / t_max)   (beta = 1, t_max = 999)

| paper (arXiv 2501.02976) | here |
|---|---|
| v_t, φ_θ(Z_t, c_text, c_l, t) | `v_target`, `v_pred` (latent, (B, 4, F, h, w)) |
| Ẑ_H (Eq. 5) = α_t·Z_t − σ_t·v̂ | `x0_from_v(schedule, x_t, v_pred, t)` |
| X̂_H, X_H | the VAE-decoded x̂0 and the GT frames, pixels in [-1, 1], (B, 3, F, H, W) |
| ψ | `radial_lowpass` ("paper") / the official magnitude mask ("official") |

Modes:
* "official": the released `train_sr.py` arithmetic, bit-for-bit (parity: shared/parity/dfloss.*).
  x̂0 is decoded under no_grad, so the DF term carries NO gradient: training is L_v only and DF is
  logged. "Low" and "high" there are low-/high-MAGNITUDE Fourier coefficients (soft mask at the 80th
  percentile of |F|), not low/high frequencies.
* "paper" (ours, the default): a radial low-pass ψ in the Fourier domain, and the DF term is
  back-propagated through the frozen VAE decoder, on a random run of frames and a spatial crop of the
  latent (bounded memory), with activation checkpointing around the decode of each frame group.

Per-sample weights are applied before the batch mean; the official code multiplies the per-sample b(t)
vector with batch-wide scalars, which is right only for batch 1 per process (it trained with batch 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from star_model.diffusion import get_velocity, x0_from_v
from star_model.schedule import NoiseSchedule

DfMode = Literal["paper", "official"]

# Constants of the official `fourier_transform` (not configurable there either).
OFFICIAL_QUANTILE = 0.8  # cutoff = 80th percentile of |F|
OFFICIAL_SAMPLE_SIZE = 10_000  # ... estimated from this many random entries when |F| has more
OFFICIAL_SHARPNESS = 10.0  # soft mask sigmoid(sharpness·(cutoff − |F|))


@dataclass(frozen=True)
class LossConfig:
    """What the DF term computes and how much of the clip it decodes."""

    mode: DfMode = "paper"  # paper: DF loss with gradient through the VAE decoder; official: as released, logged only
    alpha: float = 2.0  # c(t) = (t/t_max)^alpha: low-frequency weight, large early in sampling (large t)
    beta: float = 1.0  # b(t) = beta·(1 - t/t_max): DF weight, large late in sampling (small t)
    t_max: int = 999
    # "paper" mode: ψ passes |f| <= cutoff·Nyquist (radially). 0.25 = the band a 4x-downscaled input
    # carries at all, so L_low measures fidelity to what the LR shows and L_high what the model adds.
    cutoff: float = 0.25
    paper_factor: float = 1.0  # scale of L_DF in "paper" mode (orthonormal FFT: same units as pixels)
    # "paper" mode, memory: decode at most `df_frames` consecutive latent frames (None: all) and a
    # `df_crop` x `df_crop` latent window (None: whole frame) per sample, each group checkpointed.
    df_frames: int | None = 3  # one official decoder group
    df_crop: int | None = 32  # 256 px
    df_checkpoint: bool = True  # recompute the decoder's activations in backward
    # "official" mode
    official_factor: float = 0.01  # loss_t = 0.01·(...) in train_sr.py
    balance: float | None = None  # official `balance` path: cutoff = mean|F|·(1 + 10·balance)

    def __post_init__(self) -> None:
        if self.mode not in ("paper", "official"):
            raise ValueError(f"LossConfig.mode={self.mode!r}: choose 'paper' or 'official'")
        if self.t_max < 1:
            raise ValueError(f"LossConfig.t_max={self.t_max} must be >= 1")
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"LossConfig alpha={self.alpha}, beta={self.beta} must be >= 0")
        if not 0 < self.cutoff < math.sqrt(2):
            raise ValueError(f"LossConfig.cutoff={self.cutoff} must be in (0, sqrt 2) (fraction of Nyquist)")
        for name in ("df_frames", "df_crop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LossConfig.{name}={value} must be >= 1 or None (everything)")


@dataclass(frozen=True)
class LossTerms:
    """`total` is what backward() runs on; the others are per sample, for logging (B,)."""

    total: Tensor  # scalar
    v: Tensor  # (B,) v-loss
    df: Tensor  # (B,) DF loss, factor included, before b(t); no grad in "official" mode
    weight: Tensor  # (B,) b(t)


# --------------------------------------------------------------------------------------------------
# Timestep weights


def low_weight(t: Tensor, cfg: LossConfig = LossConfig()) -> Tensor:
    """c(t) = (t/t_max)^alpha, float32 (B,): weight of the low band within L_DF."""
    return (t.float() / cfg.t_max) ** cfg.alpha


def df_weight(t: Tensor, cfg: LossConfig = LossConfig()) -> Tensor:
    """b(t) = beta·(1 - t/t_max), float32 (B,): weight of L_DF in the total."""
    return cfg.beta * (1 - t.float() / cfg.t_max)


def v_loss(v_pred: Tensor, v_target: Tensor) -> Tensor:
    """Per-sample MSE (B,), in float32; its batch mean is the official `F.mse_loss(v_pred, v)`."""
    diff = v_pred.float() - v_target.float()
    return diff.pow(2).flatten(1).mean(1)


# --------------------------------------------------------------------------------------------------
# "official": the released frequency split


def official_frequencies(frames: Tensor, balance: float | None = None,
                         subsample_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The official `fourier_transform`: (N, C, H, W) -> (low, high), each (N, C, H, W//2+1, 2).

    rfft2 per frame in fp32; m_low = sigmoid(10·(cutoff − |F|)) with cutoff the 80th percentile of
    |F| over the whole input (exact when |F| has <= 10,000 entries, else of 10,000 entries drawn with
    `torch.randint` from the GLOBAL RNG, as officially; `subsample_idx` injects those indices) or,
    with `balance`, mean|F|·(1 + 10·balance). Real and imaginary parts stacked last.
    """
    spectrum = torch.fft.rfft2(frames.float(), dim=(-2, -1))  # (N, C, H, W//2+1) complex64
    magnitude = spectrum.abs()
    if balance is None:
        flat = magnitude.flatten()
        if flat.numel() > OFFICIAL_SAMPLE_SIZE:
            if subsample_idx is None:
                # The global RNG, as the official (it makes the loss depend on every earlier draw).
                subsample_idx = torch.randint(0, flat.numel(), (OFFICIAL_SAMPLE_SIZE,))
            flat = flat[subsample_idx.to(flat.device)]
        cutoff = torch.quantile(flat, OFFICIAL_QUANTILE)
    else:
        cutoff = magnitude.mean() * (1 + 10 * balance)
    low_mask = torch.sigmoid(OFFICIAL_SHARPNESS * (cutoff - magnitude))
    low, high = spectrum * low_mask, spectrum * (1 - low_mask)
    return (torch.stack([low.real, low.imag], dim=-1),  # (N, C, H, W//2+1, 2)
            torch.stack([high.real, high.imag], dim=-1))


def _frames_of(video_bcfhw: Tensor) -> Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W), frame-major within each sample, as `extract_frequencies`."""
    b, c, f, h, w = video_bcfhw.shape
    return video_bcfhw.transpose(1, 2).reshape(b * f, c, h, w)


def official_df_loss(pred_bcfhw: Tensor, gt_bcfhw: Tensor, t: Tensor, cfg: LossConfig = LossConfig(),
                     subsample_idx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """loss_t = 0.01·(c(t)·L1(low) + (1 − c(t))·L1(high)) per sample: (loss_t, L_low, L_high), each (B,).

    Pixels (B, 3, F, H, W) in [-1, 1]. Each sample is split on its own (cutoff of its own |F|;
    pred drawn first, then GT, as officially); the official code pools the whole batch, which is the
    same for batch 1. `subsample_idx` = (pred indices, GT indices) replaces the random draws (parity).
    """
    lows, highs = [], []
    for i in range(pred_bcfhw.shape[0]):
        idx_pred, idx_gt = subsample_idx if subsample_idx is not None else (None, None)
        low_p, high_p = official_frequencies(_frames_of(pred_bcfhw[i:i + 1]), cfg.balance, idx_pred)
        low_g, high_g = official_frequencies(_frames_of(gt_bcfhw[i:i + 1]), cfg.balance, idx_gt)
        lows.append(F.l1_loss(low_p, low_g))
        highs.append(F.l1_loss(high_p, high_g))
    low, high = torch.stack(lows), torch.stack(highs)
    c = low_weight(t, cfg).to(low.device)
    return cfg.official_factor * (c * low + (1 - c) * high), low, high


# --------------------------------------------------------------------------------------------------
# "paper": radial low-pass, with gradient


def radial_lowpass(height: int, width: int, cutoff: float, device: torch.device | str = "cpu") -> Tensor:
    """ψ (H, W) float32 in fft2's (uncentred) bin order: 1 where the radial frequency is <= cutoff·Nyquist.

    Equal to a centred (fftshift-ed) disc mask; building it from `fftfreq` skips the shifts.
    """
    fy = torch.fft.fftfreq(height, device=device).abs() / 0.5  # (H,) in units of Nyquist
    fx = torch.fft.fftfreq(width, device=device).abs() / 0.5  # (W,)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)  # (H, W)
    return (radius <= cutoff).float()


def paper_df_loss(pred_bcfhw: Tensor, gt_bcfhw: Tensor, t: Tensor, cfg: LossConfig = LossConfig()
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """L_DF = c(t)·L_low + (1 − c(t))·L_high per sample: (L_DF·paper_factor, L_low, L_high), each (B,).

    Pixels (B, 3, F, H, W). Our choice of the paper's unspecified norm: the mean modulus of the
    complex difference of orthonormal 2-D spectra, averaged over the bins inside the band (ψ, resp.
    1 − ψ), every frame and channel. The orthonormal FFT keeps it in pixel units whatever the crop size;
    averaging within each band keeps L_low from vanishing next to the far larger number of high bins.
    """
    h, w = pred_bcfhw.shape[-2:]
    # fp32 whatever the decoder ran in: a bf16 FFT loses the small high-frequency differences.
    diff = torch.fft.fft2(pred_bcfhw.float() - gt_bcfhw.float(), dim=(-2, -1), norm="ortho")  # (B, 3, F, H, W)
    modulus = diff.abs()  # linearity: F(x̂) − F(x) = F(x̂ − x)
    psi = radial_lowpass(h, w, cfg.cutoff, modulus.device)  # (H, W)
    rest = modulus.shape[1] * modulus.shape[2]  # channels x frames
    low = (modulus * psi).flatten(1).sum(1) / (psi.sum() * rest).clamp_min(1)
    high = (modulus * (1 - psi)).flatten(1).sum(1) / ((1 - psi).sum() * rest).clamp_min(1)
    c = low_weight(t, cfg).to(low.device)
    return cfg.paper_factor * (c * low + (1 - c) * high), low, high


# --------------------------------------------------------------------------------------------------
# Decoding x̂0


def pick_window(num_frames: int, height: int, width: int, cfg: LossConfig,
                generator: torch.Generator | None = None) -> tuple[slice, slice, slice]:
    """The latent (frames, rows, cols) slices the paper-mode DF decodes: a random run of `df_frames`
    consecutive frames (consecutive: the temporal decoder mixes the frames of a group) and a random
    `df_crop` square, drawn from `generator` (CPU)."""

    def span(size: int, keep: int | None) -> slice:
        keep = size if keep is None else min(keep, size)
        start = int(torch.randint(0, size - keep + 1, (1,), generator=generator)) if keep < size else 0
        return slice(start, start + keep)

    return span(num_frames, cfg.df_frames), span(height, cfg.df_crop), span(width, cfg.df_crop)


def decode_x0(vae, latents_fchw: Tensor, grad: bool, checkpointed: bool = True) -> Tensor:
    """(F, 4, h, w) scaled latents -> (F, 3, 8h, 8w) fp32 pixels through a `VideoVae`.

    With `grad`, the decoder graph is kept (the VAE's own parameters stay frozen: only the input gets
    a gradient) and, with `checkpointed`, each decoder group's activations are recomputed in backward
    instead of stored, so the DF term holds one group's activations at a time.
    """
    if not grad:
        return vae.decode(latents_fchw)  # under no_grad, as the official
    group = vae.config.decode_group_frames
    frames = []
    for first in range(0, latents_fchw.shape[0], group):
        z = latents_fchw[first:first + group]  # one decoder group: same grouping as vae.decode
        if checkpointed and torch.is_grad_enabled():
            frames.append(checkpoint(lambda zz: vae.decode(zz, grad=True), z, use_reentrant=False))
        else:
            frames.append(vae.decode(z, grad=True))
    return torch.cat(frames)


# --------------------------------------------------------------------------------------------------
# The whole loss


def star_loss(schedule: NoiseSchedule, v_pred: Tensor, x_t: Tensor, t: Tensor, z_gt: Tensor, gt_pixels: Tensor,
              vae, cfg: LossConfig = LossConfig(), generator: torch.Generator | None = None) -> LossTerms:
    """L_v + b(t)·L_DF, per sample, then the batch mean.

    v_pred, x_t, z_gt: (B, 4, F, h, w) latents (z_gt scaled, as the VAE encodes); t: (B,) int64;
    gt_pixels: (B, 3, F, 8h, 8w) in [-1, 1]; `vae` a `VideoVae`. The v target is computed here from
    z_gt and x_t as the official (α_t·x_t − z)/σ_t; x̂0 = α_t·x_t − σ_t·v̂.
    """
    # 1. v-loss against the official target
    v_target = get_velocity(schedule, z_gt.float(), x_t.float(), t)
    loss_v = v_loss(v_pred, v_target)  # (B,)

    # 2. x̂0 in latent space (fp32: σ_t·v̂ at t≈999 is the whole signal)
    x0 = x0_from_v(schedule, x_t.float(), v_pred.float(), t)  # (B, 4, F, h, w)

    # 3. decode x̂0 (all of it under no_grad officially; a window with gradient in paper mode), DF term
    f_scale = vae.downsample
    dfs = []
    for i in range(x0.shape[0]):
        if cfg.mode == "official":
            pred = decode_x0(vae, x0[i].transpose(0, 1), grad=False)  # (F, 3, H, W)
            gt = gt_pixels[i].transpose(0, 1)
        else:
            fs, ys, xs = pick_window(x0.shape[2], x0.shape[3], x0.shape[4], cfg, generator)
            z = x0[i, :, fs, ys, xs].transpose(0, 1)  # (f, 4, hc, wc)
            pred = decode_x0(vae, z, grad=torch.is_grad_enabled(), checkpointed=cfg.df_checkpoint)
            gt = gt_pixels[i, :, fs, ys.start * f_scale:ys.stop * f_scale, xs.start * f_scale:xs.stop * f_scale]
            gt = gt.transpose(0, 1)  # (f, 3, hc·8, wc·8)
        pred_b, gt_b = pred.transpose(0, 1)[None], gt.to(pred.device).float().transpose(0, 1)[None]  # (1, 3, F, H, W)
        loss_fn = official_df_loss if cfg.mode == "official" else paper_df_loss
        dfs.append(loss_fn(pred_b, gt_b, t[i:i + 1], cfg)[0])
    loss_df = torch.cat(dfs).to(loss_v.device)  # (B,)

    # 4. per-sample weights, then the batch mean
    weight = df_weight(t, cfg).to(loss_v.device)
    total = (loss_v + weight * loss_df).mean()
    return LossTerms(total=total, v=loss_v, df=loss_df, weight=weight)
