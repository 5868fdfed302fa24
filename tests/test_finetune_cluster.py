"""Fine-tuning on a real two-node Ray cluster (one machine, `ray.cluster_utils.Cluster`): one gloo worker
per node, DDP across the nodes with gradient accumulation, new pairs every epoch, and the checkpoints in
a bucket (the S3 test server) that a second run resumes from."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from ray.cluster_utils import Cluster

from helpers import REPO, media, two_node_cluster
from pipelines import storage
from pipelines.finetune.checkpoint import STATE_FILE, WEIGHTS_FILE
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.data import ClipConfig
from pipelines.finetune.trainer import run_finetune

CPUS_PER_WORKER = 2  # with 3 CPUs a node, one training worker fits on each, and 1 CPU is left for pairs tasks


@pytest.fixture
def two_nodes_with_s3(s3_server, monkeypatch) -> Iterator[Cluster]:
    # Reports are collected every 2 s by default; a TINY step takes well under that (tests/test_finetune.py).
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # inherited by every node's processes
    # the workers reach the S3 test server through the same variables as this process
    with two_node_cluster(CPUS_PER_WORKER + 1,
                          runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **s3_server.env}}) as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.timeout(240)  # about 80 s on 2 busy cores
def test_two_nodes_train_with_accumulation_into_a_bucket_and_resume(tmp_path, s3_server, two_nodes_with_s3):
    for name in ("dove_002.mp4", "dove_007.mp4"):
        shutil.copy(media(f"lq/{name}"), tmp_path / name)
    runs = s3_server.fresh("runs")
    # 2 videos x 2 clips = 4 clips; 2 workers x 2 micro-batches of 1 clip: one step per epoch, so each step
    # trains on another epoch's pairs
    cfg = FinetuneConfig(data=str(tmp_path), storage=runs, preset="tiny", workers=2, cpus_per_worker=CPUS_PER_WORKER,
                         steps=2, grad_accum=2, checkpoint_every=2, seed=1, lr=1e-3,
                         clips=ClipConfig(frames=4, crop=(48, 32), seed=1, clips_per_video=2))
    first = run_finetune(cfg)
    assert first.step == 2 and first.checkpoint.endswith("star-finetune/step_00000002")
    run = storage.join(runs, "star-finetune")
    assert storage.exists(storage.join(run, "step_00000002", WEIGHTS_FILE))

    again = run_finetune(FinetuneConfig(**{**cfg.__dict__, "steps": 3}))  # the same storage and name: resumes
    assert again.step == 3
    state = json.loads(storage.read_bytes(storage.join(run, "step_00000003", STATE_FILE)))
    assert state["resumed_at"] == [2] and [h["step"] for h in state["history"]] == [1, 2, 3]
