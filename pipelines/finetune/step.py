"""Fine-tune STAR's control branch and LIEM gates with Ray Train: v-loss + b(t)·DF loss on degraded
pairs from Ray Data, N workers (NCCL on GPUs, gloo on CPU), checkpoints in local or bucket storage, and
resumption from the latest checkpoint after a worker failure or when the job is run again.

    result = run_finetune(FinetuneConfig(data="gs://b/hr", storage="gs://b/runs", preset="official",
                                         weights="/weights", workers=8, use_gpu=True, steps=15000))

Resume: Ray Train V2 (ray 2.60, verified in its CheckpointManager) writes a snapshot of the reported
checkpoints to `storage/name/` and reloads it when a run with the same storage and name starts, so
`ray.train.get_checkpoint()` returns the latest checkpoint both after a worker restart (FailureConfig)
and in a new job; `resume_from_checkpoint=` is deprecated there (it raises). The run name is therefore
stable (`FinetuneConfig.name`), and `train_loop` restores weights, optimiser state and step from
`get_checkpoint()`.

Where we differ from the official `train_sr.py`, and why:
* DF loss: back-propagated through the frozen VAE decoder on a frame/crop window ("paper" mode); the
  released code decodes under no_grad, so its DF term never trains ("official" mode keeps that).
* Per-sample loss weights before the batch mean (the official is right for batch 1 only).
* Frozen parameters get requires_grad=False (the official only leaves them out of the optimiser):
  no weight gradients are computed for the 2 B frozen UNet parameters.
* LQ is upscaled bilinearly to GT size, as at inference (the official trains on an LQ it stored
  bicubic-upscaled); captions are always empty (archives have none; official: empty with p 0.5).
* bf16 autocast on GPUs (official accelerate default fp16); fp32 on CPU.
* Randomness (t, noise, posterior samples, dropout) is derived from (seed, step, clip), so a resumed
  run repeats an uninterrupted one bit-for-bit.
* Ray Train's controller collects one report per worker every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s)
  and a worker's report waits for the previous one: with steps shorter than that, per-step reports
  cap the rate (GPU steps of the official size take longer; CPU tests shorten the interval).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F

from pipelines import storage
from pipelines.finetune.data import (CAPTION, CLIP_SEED, GT, LQ, ClipConfig, build_pairs, derive_seed, iter_pairs,
                                  list_clips)
from pipelines.weights import check as check_weights
from pipelines.weights import local_copy
from star_model.checkpoint import CheckpointError, compare_keys, read_state_dict
from star_model.diffusion import diffuse
from star_model.losses import LossConfig, star_loss
from star_model.presets import StarPreset, Vae, WeightPaths, build_models, get_preset, resolve_weights
from star_model.schedule import build_schedule
from star_model.text import TextEncoder
from star_model.unet import StarDenoiser
from star_model.windows import latent_size_ok, min_padded_latent

log = logging.getLogger(__name__)

TRAINABLE_PREFIX = "VideoControlNet."  # the control branch, whole
LIEM_MARKERS = (".local1.", ".local2.")  # the LIEM gates, in the UNet and in the control branch
# VEnhancer-only tensors that STAR removed (reference 1.2): the noise-augmentation level embedding and
# the upscale-factor embedding of its control branch.
VENHANCER_ONLY_PREFIXES = ("VideoControlNet.hint_time_zero_linear.", "VideoControlNet.scale_cond.")

WEIGHTS_FILE = "trainable.safetensors"  # the trainable tensors, fp32
OPTIMIZER_FILE = "optimizer.pt"  # AdamW state dict (torch.save; read back with weights_only=True)
STATE_FILE = "state.json"  # step, preset, metrics history


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the official `train_sr.sh` where it says something."""

    data: str  # folder or bucket URL of HR videos
    storage: str  # folder or bucket URL for checkpoints: <storage>/<name>/
    preset: str = "tiny"  # "official" (needs weights) or "tiny" (random weights without `weights`; tests)
    weights: str | None = None  # folder or bucket with star/, text/, vae/ (star/ not needed with `venhancer`)
    venhancer: str | None = None  # start from venhancer_v2.pt instead of a STAR checkpoint (as the paper)
    checkpoint: str = "light_deg"  # which STAR checkpoint in weights/star/ to start from
    # Train the whole denoiser from a random start drawn from `seed` (nano is trained so), instead of
    # the control branch and LIEM gates of a pretrained one; the text tower and the VAE/codec stay frozen.
    from_scratch: bool = False
    name: str = "star-finetune"  # stable: a run with the same storage and name resumes
    workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    steps: int = 15_000
    batch_size: int = 1  # per worker (official: 1 per GPU on 8 GPUs)
    lr: float = 5e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True  # on GPUs only (on CPU the memory is not the limit)
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before the run fails
    seed: int = 0
    # Debug: a clip gets the same t and noise at every step. With one clip per worker this is
    # nanoGPT's overfit-one-batch check of the loop: the loss must fall.
    fixed_noise: bool = False
    # Test hook: rank 0 raises once when it reaches this step (a marker file under the run folder
    # makes it once), to exercise FailureConfig restarts.
    fail_once_at_step: int | None = None
    clips: ClipConfig = field(default_factory=ClipConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        for name in ("workers", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"FinetuneConfig lr={self.lr} and grad_clip={self.grad_clip} must be > 0")
        if self.clips.scales and len(self.clips.scales) > 1 and self.batch_size != 1:
            raise ValueError(f"clips of several scales {self.clips.scales} have LR clips of different sizes: "
                             f"use batch_size 1 (got {self.batch_size})")
        if self.from_scratch and (self.weights is not None or self.venhancer is not None):
            raise ValueError("from_scratch starts from random weights: drop weights/venhancer")
        if self.max_failures < 0:
            raise ValueError(f"FinetuneConfig.max_failures={self.max_failures} must be >= 0 (-1 is not allowed)")


@dataclass(frozen=True)
class FinetuneResult:
    step: int  # optimiser steps done
    checkpoint: str | None  # storage path of the latest checkpoint
    metrics: dict[str, Any]  # the last step's metrics


# --------------------------------------------------------------------------------------------------
# Driver: checks that fail fast, storage, the trainer


def check_config(cfg: FinetuneConfig) -> None:
    """Everything that can be checked before Ray starts: preset, weights, crop vs. model, storage.

    Raises ValueError saying what to fix."""
    preset = get_preset(cfg.preset)
    check_finetune_weights(preset, cfg)
    height, width = cfg.clips.crop
    down = preset.downsample
    if height % down or width % down:
        raise ValueError(f"crop {height}x{width} must be a multiple of the VAE's {down} px")
    if not latent_size_ok(height // down, width // down, preset.denoiser.num_downsamples):
        h, w = min_padded_latent(height // down, width // down, preset.denoiser.num_downsamples)
        raise ValueError(f"crop {height}x{width} gives a {height // down}x{width // down} latent that the "
                         f"{cfg.preset!r} UNet cannot round-trip; use e.g. {h * down}x{w * down} "
                         f"(latent height ≡ 2, width ≡ 0 mod {2 ** preset.denoiser.num_downsamples})")
    if cfg.use_gpu and cfg.loss.mode == "paper" and cfg.loss.df_crop is None and height * width > 512 * 512:
        log.warning("paper-mode DF decodes the whole %dx%d crop with gradient; set LossConfig.df_crop "
                    "if the GPU runs out of memory", height, width)
    storage.check_reachable(cfg.data)
    if not storage.list_videos(cfg.data):
        raise ValueError(f"no videos under {cfg.data} (extensions {sorted(storage.VIDEO_EXTENSIONS)})")
    storage.check_reachable(cfg.storage, writable=True)


@dataclass(frozen=True)
class FinetuneWeights:
    denoiser: Path | None  # a STAR checkpoint (.pt / .safetensors)
    venhancer: Path | None  # or VEnhancer's venhancer_v2.pt
    text: Path | None
    vae: Path | None


def check_finetune_weights(preset: StarPreset, cfg: FinetuneConfig) -> None:
    """The weights folder (local or bucket) has what the run needs; cheap: no download."""
    if cfg.from_scratch:
        return
    if cfg.venhancer is not None:
        if cfg.weights is None:
            raise ValueError("--venhancer needs --weights DIR with text/ and vae/ too; see star_model/presets.py")
        if not Path(cfg.venhancer).is_file():
            raise ValueError(f"no VEnhancer checkpoint at {cfg.venhancer}; download venhancer_v2.pt from "
                             "huggingface.co/jwhejwhe/VEnhancer")
    check_weights(preset, cfg.weights, None if cfg.venhancer else cfg.checkpoint)


def resolve_finetune_weights(preset: StarPreset, cfg: FinetuneConfig) -> FinetuneWeights:
    """Where each model's weights come from on this node (a bucket folder is copied here first);
    all None for random weights. `check_finetune_weights` has vetted the configuration."""
    if cfg.weights is None:
        return FinetuneWeights(None, None, None, None)
    paths = resolve_weights(preset, local_copy(cfg.weights), None if cfg.venhancer else cfg.checkpoint)
    assert paths is not None
    venhancer = Path(cfg.venhancer) if cfg.venhancer is not None else None
    return FinetuneWeights(paths.checkpoint, venhancer, paths.text, paths.vae)


def run_storage(url: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for `RunConfig`: a local absolute path and None, or for a
    bucket the "bucket/prefix" path and our fsspec filesystem wrapped for pyarrow, so Ray Train writes
    through the same endpoint and credentials as the rest of the pipeline (test servers included)."""
    fs, path = storage.filesystem(url)
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None  # Ray Train wants an absolute local path
    import pyarrow.fs

    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Check the config, build the pairs dataset and train to `cfg.steps`, resuming if the run's
    storage folder holds checkpoints of an earlier run with the same name."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_config(cfg)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init()  # local Ray, or the cluster of `ray job submit` (RAY_ADDRESS)
    try:
        _warn_if_no_cpu_for_data(cfg, ray.cluster_resources())
        run_url = storage.join(cfg.storage, cfg.name)
        if storage.exists(storage.join(run_url, "checkpoint_manager_snapshot.json")):
            log.info("run %s exists: resuming from its latest checkpoint", run_url)
        storage_path, storage_fs = run_storage(cfg.storage)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"cfg": cfg},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                               **({"GPU": 1} if cfg.use_gpu else {})}),
            run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
            datasets={"train": build_pairs(list_clips(cfg.data, cfg.clips), cfg.clips)},
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    metrics = dict(result.metrics or {})
    return FinetuneResult(step=int(metrics.get("step", 0)),
                          checkpoint=result.checkpoint.path if result.checkpoint else None, metrics=metrics)


def _warn_if_no_cpu_for_data(cfg: FinetuneConfig, resources: dict[str, float]) -> None:
    """The training workers hold their CPUs for the whole run; the tasks that make the training
    pairs need at least one more, or nothing ever reaches the workers. An autoscaling cluster may
    still add CPUs, so this warns instead of failing."""
    cpus, held = resources.get("CPU", 0.0), cfg.workers * cfg.cpus_per_worker
    if cpus < held + 1:
        log.warning("the cluster has %g CPUs and the %d training workers hold %g of them: the tasks that make the "
                    "training pairs need at least one more. The run waits until an autoscaler adds CPUs; on a "
                    "fixed machine pass fewer --workers", cpus, cfg.workers, held)


# --------------------------------------------------------------------------------------------------
# Models


def is_trainable(name: str) -> bool:
    """The official trainable set: the control branch and every LIEM gate (`local` in the name)."""
    return name.startswith(TRAINABLE_PREFIX) or any(m in name for m in LIEM_MARKERS)


def freeze_for_finetune(model: StarDenoiser, everything: bool = False) -> list[torch.nn.Parameter]:
    """requires_grad only on the trainable parameters (the official leaves the UNet's requires_grad on
    and only keeps it out of the optimiser; turning it off saves the UNet's weight gradients).
    `everything`: the whole denoiser trains (from scratch)."""
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(everything or is_trainable(name))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def load_venhancer(model: StarDenoiser, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load VEnhancer weights into a STAR denoiser: strict except that the LIEM tensors may be missing.

    VEnhancer's `ControlledV2VUNet` is STAR without LIEM, plus two embeddings STAR removed. Returns
    (missing LIEM keys, dropped VEnhancer-only keys); the missing gates keep their PyTorch default init,
    as in the official training (which loads with strict=False). Anything else missing, unexpected or
    mis-shaped raises CheckpointError.
    """
    state = read_state_dict(path)
    dropped = [k for k in state if k.startswith(VENHANCER_ONLY_PREFIXES)]
    for key in dropped:
        del state[key]
    missing, unexpected, misshaped = compare_keys(model.state_dict(), state)
    not_liem = [k for k in missing if not any(m in k for m in LIEM_MARKERS)]
    if not_liem or unexpected or misshaped:
        raise CheckpointError(
            f"{path} is not a VEnhancer checkpoint for this model: {len(not_liem)} missing non-LIEM keys "
            f"{not_liem[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, {len(misshaped)} mis-shaped "
            f"{misshaped[:5]}")
    model.load_state_dict(state, strict=False)
    log.info("loaded VEnhancer %s: %d LIEM tensors missing (default init): %s", path, len(missing), missing)
    log.info("dropped %d VEnhancer-only tensors: %s", len(dropped), dropped)
    return missing, dropped


def build_finetune_models(cfg: FinetuneConfig, device: torch.device) -> tuple[StarDenoiser, TextEncoder, Vae]:
    """The preset's models through the one loader (`star_model.presets.build_models`), the denoiser in
    fp32 (it holds the trainable master weights). Random starts (no weights folder, `from_scratch`, the
    LIEM gates of a VEnhancer start) are drawn from `cfg.seed`, the same on every worker and restart."""
    preset = get_preset(cfg.preset)
    weights = resolve_finetune_weights(preset, cfg)
    paths = None if weights.text is None else WeightPaths(weights.denoiser, weights.text, weights.vae)
    denoiser, text, vae = build_models(preset, paths, device=device, dtype=torch.float32, seed=cfg.seed,
                                       fresh=cfg.from_scratch or weights.venhancer is not None)
    if weights.venhancer is not None:
        load_venhancer(denoiser, weights.venhancer)
    return denoiser, text, vae


# --------------------------------------------------------------------------------------------------
# One training step


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
        self.schedule = build_schedule()
        self._contexts: dict[str, torch.Tensor] = {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", torch.float32).contiguous()
                for n, p in self.denoiser.named_parameters() if p.requires_grad}

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

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        cfg = self.cfg
        clip_seeds = [int(s) for s in batch[CLIP_SEED]]
        # 1. randomness from (seed, step, clip) only, not from the worker or what ran before: a resumed
        #    run repeats an uninterrupted one exactly, whichever worker gets which clip
        noise_step = 0 if cfg.fixed_noise else step
        gens = [torch.Generator().manual_seed(derive_seed(cfg.seed, noise_step, s)) for s in clip_seeds]
        batch_seed = derive_seed(cfg.seed, noise_step, *clip_seeds)
        torch.manual_seed(batch_seed)  # dropout, and the official DF's quantile subsample
        window_gen = torch.Generator().manual_seed(batch_seed)

        # 2. pixels: GT (B, F, 3, H, W) and LQ upscaled bilinearly to GT size as at inference (the
        #    official trainer reads an LQ it stored bicubic-upscaled); both in [-1, 1]
        gt = batch[GT].to(self.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        lq = batch[LQ].to(self.device).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        b, f, _, height, width = gt.shape
        lq = F.interpolate(lq.flatten(0, 1), size=(height, width), mode="bilinear", align_corners=False)
        lq = lq.reshape(b, f, 3, height, width)

        # 3. latents, text, timesteps, noise; x_t = alpha_t·z + sigma_t·eps
        z_gt = self._encode(gt, gens)  # (B, 4, F, h, w)
        z_lq = self._encode(lq, gens)
        y = self._context(list(batch[CAPTION]))
        t = torch.stack([torch.randint(0, self.schedule.num_timesteps, (1,), generator=g)[0] for g in gens])
        noise = torch.stack([torch.randn(z_gt.shape[1:], generator=g) for g in gens]).to(self.device)
        t = t.to(self.device)
        x_t = diffuse(self.schedule, z_gt, t, noise)

        # 4. v prediction (bf16 autocast on GPUs), loss in fp32
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext():
            v_pred = self.model(x_t, t, y, hint=z_lq)
        terms = star_loss(self.schedule, v_pred.float(), x_t, t, z_gt, gt.transpose(1, 2), self.vae, cfg.loss,
                          window_gen)

        # 5. backward (DDP averages the gradients), clip, step
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.optimizer.step()

        logged = torch.stack([terms.total.detach(), terms.v.detach().mean(), terms.df.detach().mean(),
                              grad_norm.detach().float()]).float()
        if self.distributed:
            torch.distributed.all_reduce(logged)
            logged /= torch.distributed.get_world_size()
        loss, loss_v, loss_df, norm = (float(x) for x in logged.cpu())
        return {"loss": loss, "loss_v": loss_v, "loss_df": loss_df, "grad_norm": norm}

    # -- checkpoints --------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, step: int, history: list[dict[str, Any]],
             resumed_at: list[int]) -> None:
        """Write a checkpoint folder: trainable weights, optimiser state, and state.json with the step,
        every step's metrics so far and the steps at which the run was resumed."""
        folder = Path(folder)
        safetensors.torch.save_file(self.trainable_state(), folder / WEIGHTS_FILE, metadata={"step": str(step)})
        torch.save(self.optimizer.state_dict(), folder / OPTIMIZER_FILE)
        state = {"step": step, "preset": self.cfg.preset, "history": history, "resumed_at": resumed_at}
        (folder / STATE_FILE).write_text(json.dumps(state))

    def restore(self, folder: str | os.PathLike) -> tuple[int, dict[str, Any]]:
        """Load weights, optimiser state and step from a checkpoint folder; returns (step, state.json)."""
        folder = Path(folder)
        state = json.loads((folder / STATE_FILE).read_text())
        if state["preset"] != self.cfg.preset:
            raise ValueError(f"the checkpoint in {folder} is of preset {state['preset']!r}, this run is "
                             f"{self.cfg.preset!r}; use another --storage or run name")
        weights = read_state_dict(folder / WEIGHTS_FILE)
        params = dict(self.denoiser.named_parameters())
        expected = {n for n, p in params.items() if p.requires_grad}
        if set(weights) != expected:
            raise CheckpointError(f"{folder / WEIGHTS_FILE} holds {len(weights)} tensors, the trainable set "
                                  f"has {len(expected)}: {sorted(set(weights) ^ expected)[:5]}")
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
        optimizer_state = torch.load(folder / OPTIMIZER_FILE, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(optimizer_state)
        return int(state["step"]), state


# --------------------------------------------------------------------------------------------------
# The per-worker loop


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: restore from the latest checkpoint if there is one, then step to cfg.steps,
    reporting metrics every step and a checkpoint every `checkpoint_every` steps and at the end."""
    import ray.train
    import ray.train.torch

    cfg: FinetuneConfig = config["cfg"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    logging.basicConfig(level=logging.INFO)
    started = time.perf_counter()
    trainer = FinetuneStep(cfg, device, distributed=world > 1)
    if rank == 0:
        print(f"models ready in {time.perf_counter() - started:.1f} s on {device}", flush=True)

    # 1. resume: after a worker failure and in a re-run job alike (see the module docstring)
    step, history, resumed_at = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            step, state = trainer.restore(folder)
        history, resumed_at = state.get("history", []), state.get("resumed_at", []) + [step]
        if rank == 0:
            print(f"resumed from {checkpoint.path} at step {step}", flush=True)
    if step >= cfg.steps:  # a finished run started again: report where it is, train nothing
        if rank == 0:
            print(f"nothing to do: the checkpoint is at step {step} >= {cfg.steps} steps", flush=True)
        ray.train.report({**(history[-1] if history else {}), "step": step})
        return
    shard = ray.train.get_dataset_shard("train")
    global_batch = cfg.batch_size * world

    # 2. epochs over this worker's shard until the step budget is spent
    while step < cfg.steps:
        batches = 0
        for batch in iter_pairs(shard, cfg.batch_size):
            batches += 1
            _maybe_fail(cfg, rank, step + 1)
            start = time.perf_counter()
            metrics = trainer(batch, step)
            step += 1
            seconds = time.perf_counter() - start
            metrics.update(step=step, step_seconds=seconds, clips_per_s=global_batch / seconds, time=time.time())
            history.append(metrics)
            if rank == 0:
                print(f"step {step}/{cfg.steps} loss {metrics['loss']:.4f} (v {metrics['loss_v']:.4f}, "
                      f"df {metrics['loss_df']:.4f}) {metrics['clips_per_s']:.2f} clips/s", flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _report_with_checkpoint(trainer, metrics, step, history, resumed_at, rank)
            else:
                ray.train.report(metrics)
            if step >= cfg.steps:
                break
        if batches == 0:
            raise RuntimeError(f"worker {rank} got no batch of {cfg.batch_size} clips: the data set yields "
                               f"too few clips for {world} workers; add videos, raise clips_per_video or "
                               f"lower --batch-size / --workers")


def _report_with_checkpoint(trainer: FinetuneStep, metrics: dict[str, Any], step: int,
                            history: list[dict[str, Any]], resumed_at: list[int], rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="star-ckpt-") as folder:
        checkpoint = None
        if rank == 0:  # the weights are identical on every worker (DDP): one copy is written
            trainer.save(folder, step, history, resumed_at)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{step:08d}")


def _maybe_fail(cfg: FinetuneConfig, rank: int, step: int) -> None:
    """The fault-injection hook of `FinetuneConfig.fail_once_at_step` (tests only)."""
    if cfg.fail_once_at_step != step or rank != 0:
        return
    marker = storage.join(cfg.storage, cfg.name, f".fault_injected_{step}")
    if storage.exists(marker):
        return
    storage.write_bytes_atomic(marker, b"1")
    raise RuntimeError(f"injected fault at step {step} (FinetuneConfig.fail_once_at_step)")


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(trainable weights, optimiser state dict, state.json) of a local checkpoint folder."""
    folder = Path(folder)
    weights = read_state_dict(folder / WEIGHTS_FILE)
    optimizer = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return weights, optimizer, json.loads((folder / STATE_FILE).read_text())
