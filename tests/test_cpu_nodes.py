"""CPU tasks kept off GPU nodes (pipelines/cpu_nodes.py), on a real local Ray cluster of a labelled CPU
node and a GPU node (a declared GPU: nothing here uses it): with the label present, every CPU task lands
on the CPU node; on a cluster without labelled nodes no selector is asked, so tasks still run."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from pipelines.cpu_nodes import CPU, CPU_NODE_LABEL, cpu_node_selector


@pytest.mark.timeout(180)
def test_cpu_tasks_land_on_the_labelled_cpu_node_only():
    def _node() -> str:  # nested: pickled by value, the workers cannot import this test module
        return ray.get_runtime_context().get_node_id()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        gpu = cluster.add_node(num_cpus=2, num_gpus=1)
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        assert cpu_node_selector() is None  # no CPU node yet: no selector, or the tasks would never run
        assert ray.get(ray.remote(num_cpus=1)(_node).remote()) == gpu.node_id
        cpu = cluster.add_node(num_cpus=2, labels={CPU_NODE_LABEL: CPU})
        cluster.wait_for_nodes()
        selector = cpu_node_selector()
        assert selector == {CPU_NODE_LABEL: CPU}
        task = ray.remote(num_cpus=1, label_selector=selector)(_node)
        assert set(ray.get([task.remote() for _ in range(6)])) == {cpu.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()
