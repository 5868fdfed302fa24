"""Parity of the fine-tuning loss ("official" mode) with `train_sr.py`: the frequency split, the
timestep weights, the DF and v terms, the total (shared/parity/dfloss.safetensors, README §4)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from star_model.diffusion import diffuse, get_velocity, x0_from_v
from star_model.training.losses import (LossConfig, df_weight, low_weight, official_df_loss, official_frequencies,
                                        v_loss)
from star_model.parity import Check, compare
from star_model.schedule import build_schedule

TOLERANCE = 2e-5


def _fft_bound(official: torch.Tensor) -> float:
    """FFT magnitudes (up to ~60 here) are sums whose float32 rounding depends on the machine's FFT
    summation order, so their error is proportional to the largest of them: the bound scales with it."""
    return TOLERANCE * max(1.0, float(official.abs().max()))
FIXTURE = "dfloss.safetensors"


def checks(folder: Path) -> list[Check]:
    """Every dfloss case present in `folder`; nothing when the fixture is absent."""
    if not (folder / FIXTURE).exists():
        return []
    ref = load_file(folder / FIXTURE)
    meta_file = folder / "dfloss.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    found: list[Check] = []
    for case in ("small", "large"):
        if f"{case}.loss" in ref:
            found += _case_checks(case, ref, meta.get(case, {}))
    if "balance.x" in ref:
        low, high = official_frequencies(ref["balance.x"], balance=float(ref["balance.value"]))
        found += [compare("dfloss.balance.low_freq", low, ref["balance.low_freq"], _fft_bound(ref["balance.low_freq"])),
                  compare("dfloss.balance.high_freq", high, ref["balance.high_freq"],
                          _fft_bound(ref["balance.high_freq"]))]
    return found


def _case_checks(case: str, ref: dict[str, torch.Tensor], meta: dict) -> list[Check]:
    def r(name: str) -> torch.Tensor:
        return ref[f"{case}.{name}"]

    cfg = LossConfig(mode="official")
    schedule = build_schedule()
    t = r("timesteps")
    found = [
        # the latent maths feeding the loss
        compare(f"dfloss.{case}.noised_latent", diffuse(schedule, r("latent_gt"), t, r("noise")),
                r("noised_latent"), TOLERANCE),
        compare(f"dfloss.{case}.v_target", get_velocity(schedule, r("latent_gt"), r("noised_latent"), t),
                r("v_target"), TOLERANCE),
        compare(f"dfloss.{case}.pred_x0_latent", x0_from_v(schedule, r("noised_latent"), r("v_pred"), t),
                r("pred_x0_latent"), TOLERANCE),
        compare(f"dfloss.{case}.ct", low_weight(t, cfg), r("ct"), TOLERANCE),
        compare(f"dfloss.{case}.weight_t", df_weight(t, cfg), r("weight_t"), TOLERANCE),
    ]
    pred, gt = r("pred_x0_pixels"), r("gt_pixels")
    subsample = None
    if f"{case}.subsample_idx_pred" in ref:
        # The official draws its 10,000 indices from the global RNG after manual_seed(4242) (dfloss.json),
        # pred first; we replay that draw (without disturbing the caller's RNG) and check it.
        seed = int(meta.get("torch_manual_seed_before_extract_frequencies", 4242))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss_t, low, high = official_df_loss(pred, gt, t, cfg)
        b, c, f, h, w = pred.shape
        numel = b * f * c * h * (w // 2 + 1)  # entries of the rfft2 magnitude (dfloss.json: magnitude_numel)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            drawn = [torch.randint(0, numel, (10_000,)) for _ in range(2)]
        same = all(torch.equal(d, r(f"subsample_idx_{k}")) for d, k in zip(drawn, ("pred", "gt")))
        found.append(Check(f"dfloss.{case}.subsample_idx (seed {seed})", 0.0 if same else float("inf"), 0.0))
        subsample = (r("subsample_idx_pred"), r("subsample_idx_gt"))
        # and the same with the stored indices injected
        inj_t, _, _ = official_df_loss(pred, gt, t, cfg, subsample_idx=subsample)
        found.append(compare(f"dfloss.{case}.loss_t (stored indices)", inj_t, r("loss_t"), TOLERANCE))
    else:
        loss_t, low, high = official_df_loss(pred, gt, t, cfg)
        if f"{case}.low_freq_pred" in ref:
            for name, video in (("pred", pred), ("gt", gt)):
                f_low, f_high = official_frequencies(video.transpose(1, 2).flatten(0, 1))  # (B*F, C, H, W)
                found += [compare(f"dfloss.{case}.low_freq_{name}", f_low, r(f"low_freq_{name}"),
                                  _fft_bound(r(f"low_freq_{name}"))),
                          compare(f"dfloss.{case}.high_freq_{name}", f_high, r(f"high_freq_{name}"),
                                  _fft_bound(r(f"high_freq_{name}")))]
    loss_v = v_loss(r("v_pred"), r("v_target"))
    total = loss_v + df_weight(t, cfg) * loss_t
    found += [
        compare(f"dfloss.{case}.loss_low", low, r("loss_low"), TOLERANCE),
        compare(f"dfloss.{case}.loss_high", high, r("loss_high"), TOLERANCE),
        compare(f"dfloss.{case}.loss_t", loss_t, r("loss_t"), TOLERANCE),
        compare(f"dfloss.{case}.loss_v", loss_v, r("loss_v"), TOLERANCE),
        compare(f"dfloss.{case}.loss", total, r("loss"), TOLERANCE),
    ]
    return found
