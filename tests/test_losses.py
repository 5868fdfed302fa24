"""The fine-tuning loss: timestep weights at known points, the official arithmetic against the recorded
fixtures, the paper-mode band split, and where the DF gradient goes (tiny real denoiser and VAE)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import parity
from star_model import denoiser_config as denoiser_configs
from star_model.diffusion import diffuse
from star_model.training.losses import (LossConfig, df_weight, low_weight, official_df_loss, paper_df_loss,
                                        radial_lowpass, star_loss)
from star_model.parity import losses as loss_parity
from star_model.schedule import build_schedule
from star_model.unet import load_denoiser
from star_model.vae import TINY as TINY_VAE
from star_model.vae import VideoVae, build_vae

pytestmark = pytest.mark.timeout(120)


def test_timestep_weights_at_known_points():
    t = torch.tensor([0, 500, 999])
    c, b = low_weight(t), df_weight(t)
    assert c.tolist() == pytest.approx([0.0, (500 / 999) ** 2, 1.0])
    assert b.tolist() == pytest.approx([1.0, 499 / 999, 0.0])
    # alpha and beta are the paper's knobs
    cfg = LossConfig(alpha=1.0, beta=0.5)
    assert low_weight(t, cfg).tolist() == pytest.approx([0.0, 500 / 999, 1.0])
    assert df_weight(t, cfg).tolist() == pytest.approx([0.5, 0.5 * 499 / 999, 0.0])


def test_official_mode_reproduces_the_recorded_fixtures():
    checks = loss_parity.checks(parity(loss_parity.FIXTURE).parent)
    names = {c.name for c in checks}
    for case in ("small", "large"):
        assert f"dfloss.{case}.loss" in names
    assert "dfloss.balance.low_freq" in names
    failed = [c.line() for c in checks if not c.passed]
    assert not failed, "\n".join(failed)


def test_official_mode_weights_each_sample_by_its_own_timestep():
    # Two samples at different t: each one's loss is what it would be alone (batch 1, as officially).
    gen = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 3, 2, 16, 16, generator=gen) * 2 - 1, torch.rand(2, 3, 2, 16, 16, generator=gen) * 2 - 1
    t = torch.tensor([100, 900])
    cfg = LossConfig(mode="official")
    batched, _, _ = official_df_loss(pred, gt, t, cfg)
    alone = torch.cat([official_df_loss(pred[i:i + 1], gt[i:i + 1], t[i:i + 1], cfg)[0] for i in range(2)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=0)
    assert batched[0] != batched[1]


def test_paper_mode_splits_by_radial_frequency():
    h, w = 32, 32
    psi = radial_lowpass(h, w, 0.25)
    assert psi[0, 0] == 1 and psi[h // 2, w // 2] == 0  # DC passes, Nyquist does not
    flip_h, flip_w = (-torch.arange(h)) % h, (-torch.arange(w)) % w
    assert torch.equal(psi, psi[flip_h][:, flip_w])  # symmetric under f -> -f (real images)
    gt = torch.zeros(1, 3, 2, h, w)
    t = torch.tensor([500])
    # a constant offset is all low frequency; a checkerboard is all Nyquist
    offset = gt + 0.3
    checker = gt + 0.3 * (torch.arange(h)[:, None] + torch.arange(w)[None, :]).remainder(2).mul(2).sub(1)
    _, low, high = paper_df_loss(offset, gt, t)
    assert low.item() > 0 and high.item() == 0
    _, low, high = paper_df_loss(checker, gt, t)
    assert low.item() == 0 and high.item() > 0
    # L_DF = c·L_low + (1 − c)·L_high
    both = offset + (checker - gt)
    df, low, high = paper_df_loss(both, gt, t)
    c = (500 / 999) ** 2
    assert df.item() == pytest.approx(c * low.item() + (1 - c) * high.item(), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_parts():
    torch.manual_seed(0)
    denoiser = load_denoiser(denoiser_configs.TINY).train()
    vae = VideoVae(build_vae(TINY_VAE), TINY_VAE)
    return denoiser, vae


def _df_grads(denoiser, vae, mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    schedule = build_schedule()
    gen = torch.Generator().manual_seed(1)
    gt = torch.rand(1, 3, 4, 48, 32, generator=gen) * 2 - 1  # (B, 3, F, H, W): latent 6x4 fits TINY
    z = vae.encode(gt[0].transpose(0, 1), generator=gen).transpose(0, 1)[None]  # (1, 4, F, 6, 4)
    t = torch.tensor([300])
    x_t = diffuse(schedule, z, t, torch.randn(z.shape, generator=gen))
    y = torch.randn(1, 77, denoiser.cfg.context_dim, generator=gen)
    denoiser.zero_grad(set_to_none=True)
    v = denoiser(x_t, t, y, hint=z)
    terms = star_loss(schedule, v, x_t, t, z, gt, vae, LossConfig(mode=mode), gen)
    if terms.df.requires_grad:
        terms.df.sum().backward()  # the DF term alone
    return terms.df, {n: p.grad for n, p in denoiser.named_parameters() if n.startswith("VideoControlNet.")}


def test_paper_df_gradient_reaches_the_control_branch(tiny_parts):
    denoiser, vae = tiny_parts
    df, grads = _df_grads(denoiser, vae, "paper")
    assert df.requires_grad and math.isfinite(df.item())
    nonzero = [n for n, g in grads.items() if g is not None and g.abs().max() > 0]
    assert nonzero, "no VideoControlNet parameter got a gradient from the DF loss"
    # the frozen VAE got none: only its input carries the gradient
    assert all(p.grad is None for p in vae.model.parameters())


def test_official_df_carries_no_gradient(tiny_parts):
    denoiser, vae = tiny_parts
    df, grads = _df_grads(denoiser, vae, "official")
    assert not df.requires_grad  # decoded under no_grad, as the released train_sr.py
    assert all(g is None or g.abs().max() == 0 for g in grads.values())


def _saved_bytes(fn) -> tuple[int, object]:
    """Bytes of the tensors autograd saves for backward while `fn` runs (a deterministic measure of
    activation memory; storage shared between saved tensors is counted once)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return sum(seen.values()), out


def test_df_activation_memory_paper_vs_official(tiny_parts):
    # Saved-for-backward bytes of the loss alone (the denoiser's are the same in both modes). With
    # checkpointing, backward recomputes one decoder group at a time, so the peak is the saved bytes
    # plus one group's activations (the unchecked bytes / number of groups).
    denoiser, vae = tiny_parts
    schedule = build_schedule()
    gen = torch.Generator().manual_seed(2)
    gt = torch.rand(1, 3, 6, 128, 128, generator=gen) * 2 - 1  # 6 frames, latent 16x16
    z = torch.randn(1, 4, 6, 16, 16, generator=gen)
    t = torch.tensor([200])
    x_t = diffuse(schedule, z, t, torch.randn(z.shape, generator=gen))
    v = torch.randn(z.shape, generator=gen).requires_grad_()  # stands in for the denoiser's output

    def measure(cfg: LossConfig) -> int:
        size, terms = _saved_bytes(
            lambda: star_loss(schedule, v, x_t, t, z, gt, vae, cfg, torch.Generator().manual_seed(0)))
        terms.total.backward()  # the checkpointed variants really recompute
        return size

    official = measure(LossConfig(mode="official"))
    rows = [("official (decode under no_grad)", official, official)]
    for label, frames, crop in (("paper, 6 frames x 128 px", None, None), ("paper, 3 frames x 64 px crop", 3, 8)):
        groups = math.ceil((frames or 6) / vae.config.decode_group_frames)
        plain = measure(LossConfig(df_frames=frames, df_crop=crop, df_checkpoint=False))
        ckpt = measure(LossConfig(df_frames=frames, df_crop=crop))
        rows += [(f"{label}, stored", plain, plain), (f"{label}, checkpointed", ckpt, ckpt + plain // groups)]
    print("\nDF-loss activation memory, TINY VAE, 6x128x128 clip (saved-tensor bytes; peak = saved + "
          "one recomputed group):")
    for name, saved, peak in rows:
        print(f"  {name:44s} saved {saved / 2**20:9.2f} MiB   peak ~{peak / 2**20:9.2f} MiB")
    peaks = [peak for _, _, peak in rows]
    official_peak, full_plain, full_ckpt, crop_plain, crop_ckpt = peaks
    assert official_peak < min(crop_plain, crop_ckpt) and max(crop_plain, crop_ckpt) < full_ckpt < full_plain
