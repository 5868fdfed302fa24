"""Keeping CPU work (scenes, assembly) off GPU nodes where the cluster has CPU nodes: a GPU node's CPUs
belong to its restore actors' decoding and encoding, and a GPU node kept up by a long assembly is paid
for at GPU rates. The cluster configs label their CPU worker types with CPU_NODE_LABEL (cluster/).

Asked once when the job starts: the label is required only when an alive node carries it, because a
label no node can ever carry would leave the tasks pending for good (one machine, a local cluster,
a cluster whose CPU nodes have not started: then CPU work may run anywhere, as before)."""

from __future__ import annotations

import ray

CPU_NODE_LABEL = "star-archive/node-kind"  # "cpu" on the CPU worker types of cluster/*.yaml and KubeRay
CPU = "cpu"


def cpu_node_selector() -> dict[str, str] | None:
    """The `label_selector` for CPU tasks: the CPU nodes' label, or None when no alive node has it."""
    if any(node["Alive"] and node.get("Labels", {}).get(CPU_NODE_LABEL) == CPU for node in ray.nodes()):
        return {CPU_NODE_LABEL: CPU}
    return None
