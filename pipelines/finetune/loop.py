"""The training loop each Ray Train worker runs: resume from the latest checkpoint if there is one, then
step through epochs of its shard of pairs, reporting metrics every step and a checkpoint every
`checkpoint_every` steps and at the end."""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

from pipelines import storage
from pipelines.finetune.checkpoint import read_ema, restore_checkpoint, save_checkpoint
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.data import iter_pairs
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
                state = {"step": step, "preset": cfg.preset, "seed": cfg.seed, "init": cfg.init, "history": history,
                         "resumed_at": resumed_at}
                _report_with_checkpoint(trainer, metrics, state, rank)
            else:
                ray.train.report(metrics)
            if step >= cfg.steps:
                break
        if batches == 0:
            raise RuntimeError(f"worker {rank} got no batch of {cfg.batch_size} clips: the data set yields "
                               f"too few clips for {world} workers; add videos, raise clips_per_video or "
                               f"lower --batch-size / --workers")


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
