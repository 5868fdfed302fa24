"""How big a model actor pool is and whether its actors hold GPUs: shared by the restore and the
evaluation jobs, which both run STAR in a Ray Data actor pool."""

from __future__ import annotations

import logging

import ray

from pipelines import waits
from pipelines.job_support import ConfigError

log = logging.getLogger(__name__)


def actor_pool(device: str, actors: int | None, accelerator_type: str | None = None) -> tuple[bool, int]:
    """(GPU actors?, most actors): one actor per GPU the cluster can grow to; without GPUs, CPU actors.

    `device` is auto (GPUs when the cluster has any), gpu (ask for GPUs even before an autoscaler has
    started one) or cpu; an `accelerator_type` implies GPUs. GPU actors on a Ray this job started
    itself, which has no such GPU, fail at once instead of waiting for ever."""
    gpus = max(int(ray.cluster_resources().get("GPU", 0)), gpu_ceiling())
    use_gpu = device == "gpu" or accelerator_type is not None or (device == "auto" and gpus > 0)
    if accelerator_type is not None:
        check_one_gpu_type(accelerator_type)
    if use_gpu:
        waits.check_can_start(gpu_actor_resources(accelerator_type), "a GPU actor",
                              "run on a cluster with GPUs (RAY_ADDRESS or `ray job submit`), or pass --device cpu")
        if actors is None and gpus == 0:
            log.warning("no GPU in the cluster yet and no autoscaler ceiling known: the actor pool is sized at 1 "
                        "actor; pass --actors N for the GPUs the autoscaler may start")
        return True, actors or max(gpus, 1)
    log.warning("running STAR on CPU (%s): fine for the nano and tiny presets, far too slow for the official one",
                "--device cpu" if device == "cpu" else "no GPU in the cluster")
    return False, actors or 1


def gpu_ceiling() -> int:
    """The GPUs the cluster's autoscaler may start (its node types' max workers times their GPUs), 0
    without an autoscaler config (a local Ray, a fixed cluster). Read where Ray Data itself reads it
    (its shuffle sizes itself so), as a cold cluster's GPUs present at start are none."""
    ceiling = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    return int(ceiling.get("GPU", 0))


def check_one_gpu_type(accelerator_type: str) -> None:
    """Raise ConfigError, before any GPU is asked for, if the cluster's autoscaler may start GPU nodes
    of another type than `accelerator_type`. The actors ask for that type, but Ray Data's own
    scale-up requests carry only CPU, GPU and memory (Ray 2.60: its rate-based cluster autoscaler
    turns each operator's resources into such a bundle), which the autoscaler may meet with any GPU
    node type, and those nodes stay up while the requests last, unused. A cluster config with GPU
    nodes of one type (cluster/README.md) leaves it no other choice. Without an autoscaler config
    (a local Ray, a fixed cluster) nothing is started, so nothing is checked."""
    others = sorted(group.name or str(dict(group.resources)) for group in _node_groups()
                    if group.resources.get("GPU", 0) > 0 and group.max_count != 0
                    and group.resources.get(f"accelerator_type:{accelerator_type}", 0) <= 0)
    if others:
        raise ConfigError(f"--accelerator-type {accelerator_type}: this cluster's autoscaler may also start GPU nodes "
                          f"of the types {', '.join(others)}, and Ray Data's own scale-up requests (which name no GPU "
                          f"type) may start those, unused; launch the cluster from a config whose GPU nodes are all "
                          f"{accelerator_type} (cluster/README.md, \"Picking the GPU\"), or set their max_workers to 0")


def _node_groups() -> list:
    """The node types of the cluster's autoscaler config (resources, max_count, name), [] without one.
    A private API (ray._private.state; the config the autoscaler publishes in the GCS): Ray has no
    public one for the node types an autoscaler may start."""
    config = ray._private.state.state.get_cluster_config()
    return list(config.node_group_configs) if config is not None else []


def gpu_actor_resources(accelerator_type: str | None) -> dict[str, float]:
    """What one GPU actor of the pool needs from the cluster."""
    return {"GPU": 1.0} | ({f"accelerator_type:{accelerator_type}": 0.001} if accelerator_type else {})
