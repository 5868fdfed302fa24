"""Ray wiring of the fine-tuning job: check the config, list the clips and run the workers' loop with
Ray Train's `TorchTrainer` (NCCL on GPUs, gloo on CPU), checkpoints in local or bucket storage. Each
worker cuts its pairs with a Ray Data plan of its own per epoch (pipelines/finetune/loop.py): a dataset
given to the trainer would be the same plan, so the same pairs, in every epoch.

Resume: Ray Train V2 (ray 2.60, verified in its CheckpointManager) writes a snapshot of the reported
checkpoints to `storage/name/` and reloads it when a run with the same storage and name starts, so
`ray.train.get_checkpoint()` returns the latest checkpoint both after a worker restart (FailureConfig)
and in a new job; `resume_from_checkpoint=` is deprecated there (it raises). The run name is therefore
stable (`FinetuneConfig.name`), and `train_loop` restores weights, optimiser state and step from
`get_checkpoint()`.

Ray Train's controller collects one report per worker every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s)
and a worker's report waits for the previous one: with steps shorter than that, per-step reports cap
the rate (GPU steps of the official size take longer; CPU tests shorten the interval).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipelines import storage, waits
from pipelines.finetune.config import FinetuneConfig, FinetuneResult, check_config
from pipelines.finetune.data import list_clips
from pipelines.finetune.loop import train_loop
from pipelines.job_support import ray_started
from pipelines.shared_storage import check_shared

log = logging.getLogger(__name__)


def run_finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Check the config, list the clips and train to `cfg.steps`, resuming if the run's storage folder
    holds checkpoints of an earlier run with the same name."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    check_config(cfg)
    with ray_started():
        check_shared(cfg.data, "--data", writable=False)
        if cfg.weights is not None:
            check_shared(cfg.weights, "--weights", writable=False)
        check_shared(cfg.storage, "--storage")  # every worker writes its checkpoint shards there
        need = _resources_needed(cfg)
        what = f"fine-tuning with {cfg.workers} worker(s)"
        waits.check_can_start(need, what, f"pass fewer --workers or a smaller --cpus-per-worker (the {cfg.workers} "
                              "workers hold their CPUs for the whole run, and the tasks that make the training pairs "
                              "need 1 CPU besides)")
        clips = list_clips(cfg.data, cfg.clips)
        run_url = storage.join(cfg.storage, cfg.name)
        if storage.exists(storage.join(run_url, "checkpoint_manager_snapshot.json")):
            log.info("run %s exists: resuming from its latest checkpoint", run_url)
        storage_path, storage_fs = run_storage(cfg.storage)
        trainer = TorchTrainer(
            train_loop,
            # the clip rows once in the object store, not pickled into every worker's config
            train_loop_config={"cfg": cfg, "clips": ray.put(clips)},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                               **({"GPU": 1} if cfg.use_gpu else {})}),
            run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints)),
        )
        with waits.waiting_lines(need, what):
            result = trainer.fit()
    metrics = dict(result.metrics or {})
    return FinetuneResult(step=int(metrics.get("step", 0)),
                          checkpoint=result.checkpoint.path if result.checkpoint else None, metrics=metrics)


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


def _resources_needed(cfg: FinetuneConfig) -> dict[str, float]:
    """What the run holds at once: the training workers' CPUs (and GPUs) for the whole run, plus one
    CPU for the tasks that make the training pairs, or nothing ever reaches the workers."""
    need = {"CPU": cfg.workers * cfg.cpus_per_worker + 1}
    return need | ({"GPU": float(cfg.workers)} if cfg.use_gpu else {})
