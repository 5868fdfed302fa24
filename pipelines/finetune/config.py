"""What one fine-tuning run is (`FinetuneConfig`, whose fields are also the job's flags) and every check
that can fail before Ray starts: preset, weights, crop against the model, storage.

    result = run_finetune(FinetuneConfig(data="gs://b/hr", storage="gs://b/runs", preset="official",
                                         weights="/weights", workers=8, use_gpu=True, steps=15000))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines import listing
from pipelines.finetune.data import ClipConfig
from pipelines.reachable import check_reachable
from pipelines.weights import check as check_weights
from star_model.training.losses import LossConfig
from star_model.padding import latent_size_ok, min_padded_latent
from star_model.presets import StarPreset, get_preset
from star_model.weights_folder import DEFAULT_CHECKPOINT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the official `train_sr.sh` where it says something; the
    comment beside a field is its --help in jobs/finetune.py."""

    data: str  # folder or bucket URL of HR videos
    storage: str  # folder or bucket URL for checkpoints: <storage>/<name>/
    preset: str = "official"  # official (needs --weights), nano, or tiny (random weights without --weights; tests)
    weights: str | None = None  # folder or bucket with star/, text/, vae/ (jobs/fetch_weights.py)
    venhancer: str | None = None  # start the denoiser from venhancer_v2.pt instead of a STAR checkpoint (as the paper)
    checkpoint: str = DEFAULT_CHECKPOINT  # which STAR checkpoint in weights/star/ to start from
    # Train the whole denoiser from a random start drawn from --seed (nano is trained so), instead of the
    # control branch and LIEM gates of a pretrained one; the text tower and the VAE/codec stay frozen.
    from_scratch: bool = False
    # With from_scratch: the whole denoiser trains from this file of the preset's shipped layout (nano's
    # shipped files, or one --export wrote) instead of a random start; a resumed run still resumes.
    init: str | None = None
    name: str = "star-finetune"  # run name: a run with the same storage and name resumes
    workers: int = 1  # training workers (one GPU each with --use-gpu)
    use_gpu: bool = False  # one GPU per worker, NCCL, bf16 autocast
    cpus_per_worker: float = 1.0  # CPUs each training worker holds (the pairs tasks need more besides)
    steps: int = 15_000  # total optimiser steps (resumed runs count on)
    batch_size: int = 1  # clips per worker per micro-batch (official: 1 per GPU on 8 GPUs)
    # Micro-batches per optimiser step, their gradients accumulated (each loss scaled by 1/N): a step
    # trains on batch_size x grad_accum x workers clips with the memory of batch_size
    grad_accum: int = 1
    lr: float = 5e-5  # AdamW learning rate, constant (official); a resumed run takes the one given
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    gradient_checkpointing: bool = True  # on GPUs only (on CPU the memory is not the limit)
    checkpoint_every: int = 500  # steps between checkpoints (and one at the end)
    keep_checkpoints: int | None = 3
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before the run fails
    seed: int = 0  # draws the clips, the noise and every random initial weight
    # Training timesteps, first,last (inclusive), drawn uniformly (official: all 1000). A from-scratch
    # model that restores in one step at t_start learns only where its sampler asks (nano: 850,950).
    timesteps: tuple[int, int] = (0, 999)
    # Decay of an exponential moving average of the trained weights, kept in every checkpoint beside
    # them and what --export writes (None: no average, as the official trainer)
    ema: float | None = None
    # Debug: a clip gets the same t and noise at every step (overfit a tiny set). With one clip per
    # worker this is nanoGPT's overfit-one-batch check of the loop: the loss must fall.
    fixed_noise: bool = False
    # Test hook: rank 0 raises once when it reaches this step (a marker file under the run folder
    # makes it once), to exercise FailureConfig restarts.
    fail_once_at_step: int | None = None
    clips: ClipConfig = field(default_factory=ClipConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        for name in ("workers", "steps", "batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"FinetuneConfig lr={self.lr} and grad_clip={self.grad_clip} must be > 0")
        if self.clips.scales and len(self.clips.scales) > 1 and self.batch_size != 1:
            raise ValueError(f"clips of several scales {self.clips.scales} have LR clips of different sizes: "
                             f"use batch_size 1 (got {self.batch_size})")
        if self.init is not None and not self.from_scratch:
            raise ValueError("init starts a from-scratch run (the whole denoiser trains) from a file: add from_scratch")
        if self.from_scratch and (self.weights is not None or self.venhancer is not None):
            raise ValueError("from_scratch starts from random weights: drop weights/venhancer")
        if len(self.timesteps) != 2 or not 0 <= self.timesteps[0] <= self.timesteps[1] <= 999:
            raise ValueError(f"FinetuneConfig.timesteps={self.timesteps} must be two steps first,last "
                             f"with 0 <= first <= last <= 999")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"FinetuneConfig.ema={self.ema} must be in (0, 1), e.g. 0.999")
        if self.max_failures < 0:
            raise ValueError(f"FinetuneConfig.max_failures={self.max_failures} must be >= 0 (-1 is not allowed)")


@dataclass(frozen=True)
class FinetuneResult:
    step: int  # optimiser steps done
    checkpoint: str | None  # storage path of the latest checkpoint
    metrics: dict[str, Any]  # the last step's metrics


def check_config(cfg: FinetuneConfig) -> None:
    """Everything that can be checked before Ray starts: preset, weights, crop vs. model, storage.

    Raises ValueError saying what to fix."""
    preset = get_preset(cfg.preset)
    if preset.cog is not None:
        raise ValueError(f"preset {cfg.preset!r}: fine-tuning the CogVideoX-based STAR is not implemented (README, "
                         f"'The CogVideoX-based STAR'); choose nano, official or tiny")
    if not preset.has_model:
        raise ValueError(f"preset {cfg.preset!r} has no model to fine-tune; choose nano, official or tiny")
    check_finetune_weights(preset, cfg)
    if cfg.init is not None and (preset.shipped is None or not Path(cfg.init).is_file()):
        raise ValueError(f"--init {cfg.init}: not a file, or preset {cfg.preset!r} has no shipped layout to load it as")
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
    check_reachable(cfg.data)
    videos = listing.list_videos(cfg.data)
    if not videos:
        raise ValueError(f"no videos under {cfg.data} (extensions {sorted(listing.VIDEO_EXTENSIONS)})")
    clips, per_step = len(videos) * cfg.clips.clips_per_video, cfg.workers * cfg.batch_size * cfg.grad_accum
    if clips < per_step:  # every worker takes the same number of clips per epoch (pipelines/finetune/loop.py)
        raise ValueError(f"{clips} clip(s) under {cfg.data}, but a step takes {per_step} ({cfg.workers} worker(s) "
                         f"x {cfg.grad_accum} batch(es) of {cfg.batch_size}): add videos, raise --clips-per-video "
                         f"or lower --workers / --batch-size / --grad-accum")
    check_reachable(cfg.storage, writable=True)


def check_finetune_weights(preset: StarPreset, cfg: FinetuneConfig) -> None:
    """The weights folder (local or bucket) has what the run needs; cheap: no download."""
    if cfg.from_scratch:
        return
    if cfg.venhancer is not None:
        if cfg.weights is None:
            raise ValueError("--venhancer needs --weights DIR with text/ and vae/ too; see "
                             "star_model/weights_folder.py")
        if not Path(cfg.venhancer).is_file():
            raise ValueError(f"no VEnhancer checkpoint at {cfg.venhancer}; download venhancer_v2.pt from "
                             "huggingface.co/jwhejwhe/VEnhancer")
    check_weights(preset, cfg.weights, None if cfg.venhancer else cfg.checkpoint)
