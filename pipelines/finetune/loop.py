"""The training loop each Ray Train worker runs: resume from the latest checkpoint if there is one, then
step through epochs of its share of the clips (the pairs of each epoch cut by Ray Data tasks), reporting
metrics every step and a checkpoint every `checkpoint_every` steps and at the end.

Worker r takes clips r, r+W, r+2W, ... (the same after every restart), the same number on every worker,
so all take the same steps per epoch (DDP steps together), and where an epoch and a step in it start
follows from the step alone: a resumed run starts its epoch's pairs at the first clip not yet trained
on, and repeats the uninterrupted run exactly while every clip is usable (a skipped video shortens that
worker's epoch)."""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from pipelines import storage
from pipelines.finetune.checkpoint import read_ema, restore_checkpoint, save_checkpoint
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.data import build_pairs, epoch_clips, iter_pairs
from pipelines.finetune.step import FinetuneStep


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker: restore from the latest checkpoint if there is one, then step to cfg.steps."""
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

    # 1. resume: after a worker failure and in a re-run job alike (pipelines/finetune/trainer.py)
    step, history, resumed_at = 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = restore_checkpoint(folder, trainer.denoiser, trainer.optimizer, cfg.preset)
            trainer.load_ema(read_ema(folder))
        for group in trainer.optimizer.param_groups:  # the saved state keeps its moments, not its rate:
            group["lr"] = cfg.lr  # a resumed run trains at the --lr it is given (lower it to settle a run)
        step = int(state["step"])
        history, resumed_at = state.get("history", []), state.get("resumed_at", []) + [step]
        if rank == 0:
            print(f"resumed from {checkpoint.path} at step {step}", flush=True)
    if step >= cfg.steps:  # a finished run started again: report where it is, train nothing
        if rank == 0:
            print(f"nothing to do: the checkpoint is at step {step} >= {cfg.steps} steps", flush=True)
        ray.train.report({**(history[-1] if history else {}), "step": step})
        return
    clips = ray.get(config["clips"])
    group = cfg.batch_size * cfg.grad_accum  # clips per worker per optimiser step
    steps_per_epoch = len(clips) // world // group  # run_finetune checked it is >= 1
    mine = clips[rank::world][:steps_per_epoch * group]
    global_batch = group * world

    # 2. epochs over this worker's clips until the step budget is spent
    epoch, done = divmod(step, steps_per_epoch)
    while step < cfg.steps:
        rows = epoch_clips(mine[done * group:], 0 if cfg.fixed_noise else epoch)  # fixed_noise: one fixed set
        done, steps_this_epoch, micro_batches = 0, 0, []
        for batch in iter_pairs(build_pairs(rows, cfg.clips), cfg.batch_size):
            micro_batches.append(batch)
            if len(micro_batches) < cfg.grad_accum:
                continue
            steps_this_epoch += 1
            _maybe_fail(cfg, rank, step + 1)
            start = time.perf_counter()
            metrics = trainer(micro_batches, step)
            micro_batches = []
            step += 1
            seconds = time.perf_counter() - start
            metrics.update(step=step, step_seconds=seconds, clips_per_s=global_batch / seconds, time=time.time())
            history.append(metrics)
            if rank == 0:
                print(f"step {step}/{cfg.steps} loss {metrics['loss']:.4f} (v {metrics['loss_v']:.4f}, "
                      f"df {metrics['loss_df']:.4f}) {metrics['clips_per_s']:.2f} clips/s", flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                state = {"step": step, "preset": cfg.preset, "seed": cfg.seed, "init": cfg.init, "history": history,
                         "resumed_at": resumed_at}
                _report_with_checkpoint(trainer, metrics, state, rank)
            else:
                ray.train.report(metrics)
            if step >= cfg.steps:
                break
        if steps_this_epoch == 0:
            raise RuntimeError(f"worker {rank} got no step of {cfg.grad_accum} batch(es) of {cfg.batch_size} clips "
                               f"from its {len(rows)} clips of epoch {epoch}: its videos are too short, too small "
                               f"or unreadable (see the warnings); add videos or lower --batch-size / --grad-accum")
        epoch += 1


def _report_with_checkpoint(trainer: FinetuneStep, metrics: dict[str, Any], state: dict[str, Any], rank: int) -> None:
    import ray.train

    with tempfile.TemporaryDirectory(prefix="star-ckpt-") as folder:
        checkpoint = None
        if rank == 0:  # the weights are identical on every worker (DDP): one copy is written
            save_checkpoint(folder, trainer.denoiser, trainer.optimizer, state, trainer.ema_state())
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"step_{state['step']:08d}")


def _maybe_fail(cfg: FinetuneConfig, rank: int, step: int) -> None:
    """The fault-injection hook of `FinetuneConfig.fail_once_at_step` (tests only)."""
    if cfg.fail_once_at_step != step or rank != 0:
        return
    marker = storage.join(cfg.storage, cfg.name, f".fault_injected_{step}")
    if storage.exists(marker):
        return
    storage.write_bytes_atomic(marker, b"1")
    raise RuntimeError(f"injected fault at step {step} (FinetuneConfig.fail_once_at_step)")
