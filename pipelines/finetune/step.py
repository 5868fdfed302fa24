"""One fine-tuning step (models, optimiser, v-loss + b(t)·DF loss, backward), usable without Ray: the
training workers call it on the pairs of their shard, tests on hand-built batches.

Where we differ from the official `train_sr.py`, and why:
* DF loss: back-propagated through the frozen VAE decoder on a frame/crop window ("paper" mode); the
  released code decodes under no_grad, so its DF term never trains ("official" mode keeps that).
* Per-sample loss weights before the batch mean (the official is right for batch 1 only).
* Frozen parameters get requires_grad=False (the official only leaves them out of the optimiser):
  no weight gradients are computed for the 2 B frozen UNet parameters.
* LQ is upscaled to GT size as the preset does at inference, bilinearly (bicubic for nano); the official
  trains on an LQ it stored bicubic-upscaled. Captions are always empty (archives have none; official:
  empty with p 0.5).
* bf16 autocast on GPUs (official accelerate default fp16); fp32 on CPU.
* Randomness (t, noise, posterior samples, dropout, random initial weights) is derived from the seed,
  the step and the clip, so a resumed run repeats an uninterrupted one bit-for-bit.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.data import CAPTION, CLIP_SEED, GT, LQ, derive_seed
from pipelines.weights import local_copy
from star_model.diffusion import diffuse, velocity
from star_model.training.trainable import freeze_for_finetune, load_venhancer
from star_model.training.losses import LossTerms, star_loss
from star_model.presets import Vae, build_models, get_preset, load_shipped, resolve_weights
from star_model.restore import pre_upscale
from star_model.schedule import build_schedule
from star_model.text import TextEncoder
from star_model.unet import StarDenoiser
from star_model.weights_folder import WeightPaths


def build_finetune_models(cfg: FinetuneConfig, device: torch.device) -> tuple[StarDenoiser, TextEncoder, Vae]:
    """The preset's models through the one loader (`star_model.presets.build_models`), the denoiser in
    fp32 (it holds the trainable master weights). Random starts (no weights folder, `from_scratch`, the
    LIEM gates of a VEnhancer start) are drawn from `cfg.seed`, the same on every worker and restart.
    A bucket weights folder is copied to this node first; `check_finetune_weights` has vetted it."""
    preset = get_preset(cfg.preset)
    paths: WeightPaths | None = None
    if cfg.weights is not None:
        paths = resolve_weights(preset, local_copy(cfg.weights), None if cfg.venhancer else cfg.checkpoint)
    # fine-tuning nano's shipped weights starts from the file for the largest scale trained
    if cfg.init is not None:  # a from-scratch run that starts from a shipped-layout file
        return load_shipped(preset, device=device, dtype=torch.float32, path=cfg.init)
    denoiser, text, vae = build_models(preset, paths, device=device, dtype=torch.float32, seed=cfg.seed,
                                       fresh=cfg.from_scratch or cfg.venhancer is not None,
                                       scale=max(cfg.clips.scale_factors))
    if cfg.venhancer is not None:
        load_venhancer(denoiser, Path(cfg.venhancer))
    return denoiser, text, vae


class FinetuneStep:
    """The models, the optimiser and one step of the loop; usable without Ray (tests call it on
    hand-built batches). With `distributed`, the denoiser is wrapped in DDP (the process group is
    Ray Train's) and the logged losses are averaged over workers."""

    def __init__(self, cfg: FinetuneConfig, device: torch.device, distributed: bool = False) -> None:
        self.cfg, self.device = cfg, device
        self.denoiser, self.text, self.vae = build_finetune_models(cfg, device)
        self.trainable = freeze_for_finetune(self.denoiser, everything=cfg.from_scratch)
        if cfg.gradient_checkpointing and device.type == "cuda":
            self.denoiser.set_gradient_checkpointing(True)
        self.denoiser.train()  # dropout as the official; the VAE and the text encoder stay in eval
        self.model: torch.nn.Module = self.denoiser
        self.distributed = distributed
        if distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.denoiser, device_ids=[device.index] if device.type == "cuda" else None)
        # AdamW on the trainable parameters only, official hyper-parameters; constant lr (official).
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                           weight_decay=cfg.weight_decay)
        # The moving average of the trained weights (cfg.ema), one tensor per trainable parameter, in the
        # order of `trainable`; torch's EMA update (swa_utils), applied after every optimiser step.
        self.ema = [p.detach().clone() for p in self.trainable] if cfg.ema is not None else None
        self._ema_update = get_ema_multi_avg_fn(cfg.ema) if cfg.ema is not None else None
        names = {id(p): n for n, p in self.denoiser.named_parameters()}
        self._trainable_names = [names[id(p)] for p in self.trainable]
        self.schedule = build_schedule()
        self.upscale = get_preset(cfg.preset).restore_config().upscale
        self._contexts: dict[str, torch.Tensor] = {}

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """{parameter name: its moving average}, None without cfg.ema."""
        if self.ema is None:
            return None
        return dict(zip(self._trainable_names, self.ema))

    def load_ema(self, state: dict[str, torch.Tensor] | None) -> None:
        """Resume the average from a checkpoint's; None (a checkpoint without one) restarts it from the
        current weights."""
        if self.ema is None:
            return
        with torch.no_grad():
            for name, p, e in zip(self._trainable_names, self.trainable, self.ema):
                e.copy_(p if state is None else state[name])

    def _context(self, captions: list[str]) -> torch.Tensor:
        """(B, 77, D) text context; each distinct caption is encoded once (they are all "").

        Fine-tuning encodes the caption as given (official). From scratch, a caption is encoded as the
        restorer's conditional context (caption + positive suffix): nano restores without guidance,
        so that is the only context it ever sees."""
        for caption in set(captions) - set(self._contexts):
            if self.cfg.from_scratch:
                self._contexts[caption] = self.text.context_for(caption)[0][0]
            else:
                self._contexts[caption] = self.text.encode([caption])[0]
        return torch.stack([self._contexts[c] for c in captions]).to(self.device)

    def _encode(self, frames_bfchw: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        """(B, F, 3, H, W) in [-1, 1] -> (B, C, F, H/f, W/f) sampled latents (per frame, as officially)."""
        latents = [self.vae.encode(clip, generator=g) for clip, g in zip(frames_bfchw, generators)]
        return torch.stack(latents).transpose(1, 2)  # (B, F, 4, h, w) -> (B, 4, F, h, w)

    def __call__(self, micro_batches: list[dict[str, Any]], step: int) -> dict[str, float]:
        """One optimiser step on `micro_batches` (cfg.grad_accum of them, one batch without
        accumulation): each micro-batch's loss is scaled by 1/N and back-propagated as it comes, so the
        accumulated gradient is the mean over all N·B clips, as one batch of N·B would give, with the
        activations of one micro-batch in memory."""
        cfg = self.cfg
        n = len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        logged = torch.zeros(3)
        for i, batch in enumerate(micro_batches):
            # DDP all-reduces gradients in backward: only the last micro-batch's backward syncs, the others
            # accumulate locally (no_sync covers forward and backward, as DDP requires)
            last = i == n - 1
            with self.model.no_sync() if self.distributed and not last else nullcontext():
                terms = self._loss(batch, step)
                (terms.total / n).backward()
            terms_now = torch.stack([terms.total.detach(), terms.v.detach().mean(), terms.df.detach().mean()])
            logged += terms_now.cpu() / n

        # clip the accumulated gradient, step, average
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self._ema_update(self.ema, [p.detach() for p in self.trainable], None)

        logged = torch.cat([logged, grad_norm.detach().float().cpu().reshape(1)]).to(self.device)
        if self.distributed:
            torch.distributed.all_reduce(logged)
            logged /= torch.distributed.get_world_size()
        loss, loss_v, loss_df, norm = (float(x) for x in logged.cpu())
        return {"loss": loss, "loss_v": loss_v, "loss_df": loss_df, "grad_norm": norm}

    def _loss(self, batch: dict[str, Any], step: int) -> LossTerms:
        """The loss terms of one micro-batch."""
        cfg = self.cfg
        clip_seeds = [int(s) for s in batch[CLIP_SEED]]
        # 1. randomness from (seed, step, clip) only, not from the worker or what ran before: a resumed
        #    run repeats an uninterrupted one exactly, whichever worker gets which clip
        noise_step = 0 if cfg.fixed_noise else step
        gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, noise_step, s)) for s in clip_seeds]
        batch_seed = derive_seed(cfg.seed, noise_step, *clip_seeds)
        torch.manual_seed(batch_seed)  # dropout, and the official DF's quantile subsample
        window_gen = torch.Generator().manual_seed(batch_seed)

        # 2. pixels: GT (B, F, 3, H, W) and LQ upscaled to GT size as the preset restores (bilinear,
        #    bicubic for nano; the official trainer reads an LQ it stored bicubic-upscaled); in [-1, 1]
        gt = batch[GT].to(self.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        lq = batch[LQ].to(self.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        b, f, _, height, width = gt.shape
        lq = pre_upscale(lq.flatten(0, 1), height // lq.shape[3], self.upscale).reshape(b, f, 3, height, width)

        # 3. latents, text, timesteps, noise; x_t = alpha_t·z + sigma_t·eps
        z_gt = self._encode(gt, gens)  # (B, 4, F, h, w)
        z_lq = self._encode(lq, gens)
        y = self._context(list(batch[CAPTION]))
        first, last = cfg.timesteps
        t = torch.stack([torch.randint(first, last + 1, (1,), generator=g)[0] for g in gens])
        noise = torch.stack([torch.randn(z_gt.shape[1:], generator=g) for g in gens]).to(self.device)
        t = t.to(self.device)
        x_t = diffuse(self.schedule, z_gt, t, noise)

        # 4. v prediction (bf16 autocast on GPUs), loss in fp32
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext():
            out = self.model(x_t, t, y, hint=z_lq)
        v_pred = velocity(self.denoiser, self.schedule, out.float(), x_t, t, z_lq)  # out itself unless residual
        return star_loss(self.schedule, v_pred, x_t, t, z_gt, gt.transpose(1, 2), self.vae, cfg.loss, window_gen)
