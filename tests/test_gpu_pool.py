"""The restore actor pool against the node types a cluster's autoscaler may start (`pipelines.actors`):
its maximum from the cluster's GPU ceiling, and --accelerator-type refused on a cluster that may start
GPU nodes of another type. A local Ray, with a node-type config published in its GCS as an autoscaler
publishes it (no cloud, no autoscaler process)."""

from __future__ import annotations

import pytest
import ray
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

from pipelines.actors import actor_pool, check_one_gpu_type, gpu_ceiling
from pipelines.job_support import ConfigError

CPU = ("cpu", {"CPU": 16, "memory": 2**35}, 8)
L4 = ("gpu_l4", {"CPU": 16, "GPU": 1, "memory": 2**35, "accelerator_type:L4": 1}, 8)
L4_SPOT = ("gpu_l4_spot", {"CPU": 16, "GPU": 1, "memory": 2**35, "accelerator_type:L4": 1}, 4)
A100 = ("gpu_a100", {"CPU": 96, "GPU": 8, "memory": 2**38, "accelerator_type:A100": 1}, 2)


@pytest.fixture
def publish(local_ray):
    """Publish node types (name, resources, max nodes) as the cluster's autoscaler config."""

    def put(*groups: tuple[str, dict, int]) -> None:
        config = autoscaler_pb2.ClusterConfig(node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name=name, resources=resources, max_count=count)
            for name, resources, count in groups])
        _internal_kv_put(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, config.SerializeToString(), overwrite=True,
                         namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)

    yield put
    _internal_kv_del(ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE)


def test_the_pool_may_grow_to_every_gpu_the_autoscaler_may_start(publish):
    assert gpu_ceiling() == 0  # a local Ray: no autoscaler config
    publish(CPU, L4, L4_SPOT, A100)
    assert gpu_ceiling() == 8 + 4 + 2 * 8  # not the GPUs present now: none


def test_an_accelerator_type_is_refused_where_the_autoscaler_may_start_another(publish):
    check_one_gpu_type("L4")  # no autoscaler config: nothing is started, nothing to refuse
    publish(CPU, L4, L4_SPOT)
    check_one_gpu_type("L4")  # on-demand and spot nodes of one type
    publish(CPU, L4, A100)
    with pytest.raises(ConfigError, match="gpu_a100"):
        check_one_gpu_type("L4")
    with pytest.raises(ConfigError, match="gpu_l4"):  # before any GPU actor is asked for
        actor_pool("gpu", None, "A100")
    publish(CPU, L4, (A100[0], A100[1], 0))  # a type switched off (max_workers 0) is never started
    check_one_gpu_type("L4")
