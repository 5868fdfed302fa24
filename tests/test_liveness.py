"""Runs a retry judges dead at once, without waiting for their heartbeats to expire
(pipelines/restore/liveness.py): an earlier try of the same run name, and a run whose driver's node
this Ray cluster no longer counts alive (on a real multi-node cluster on this machine)."""

from __future__ import annotations

import time

import ray

from helpers import claim_all
from test_lease import SOURCES, Clock, elsewhere, started


def test_a_retry_of_the_same_submission_takes_over_at_once(tmp_path):
    """An earlier try of this run's name (a RayJob retry after its head was lost) is dead; a newer one
    is not, so two tries never take videos back and forth; a run of another name waits for expiry."""
    root = str(tmp_path / "out")
    clock = Clock()
    claim_all(started(root, "run-a", clock, name="nightly-1207"), SOURCES)
    elsewhere(root, "run-a")
    assert claim_all(started(root, "run-b", clock, name="nightly-1206"), SOURCES).mine == []
    retry = claim_all(started(root, "run-c", clock, name="nightly-1207"), SOURCES)
    assert retry.mine == SOURCES and retry.taken_over
    elsewhere(root, "run-c")
    older = claim_all(started(root, "run-a", clock, name="nightly-1207"), SOURCES)
    assert older.mine == [] and {holder for _, holder in older.held} == {"run-c"}


def test_a_run_whose_node_left_the_cluster_is_taken_over_at_once(two_nodes, tmp_path):
    """A heartbeat that names a node of this cluster: held while the node is alive, free once the
    cluster counts it dead; a node of another cluster is never judged from here."""
    root = str(tmp_path / "out")
    clock = Clock()
    node = two_nodes.add_node(num_cpus=1)
    cluster = ray.get_runtime_context().gcs_address
    claim_all(started(root, "run-a", clock), SOURCES[:3])
    elsewhere(root, "run-a", cluster=cluster, node=node.node_id)
    claim_all(started(root, "run-b", clock), SOURCES[3:])
    elsewhere(root, "run-b", cluster="10.0.0.9:6379", node=node.node_id)
    assert claim_all(started(root, "run-c", clock), SOURCES).mine == []
    two_nodes.remove_node(node)
    deadline = time.monotonic() + 60
    while any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes()):
        assert time.monotonic() < deadline, "the removed node still counts as alive"
        time.sleep(0.1)
    claims = claim_all(started(root, "run-c", clock), SOURCES)
    assert claims.mine == SOURCES[:3] and {holder for _, holder in claims.held} == {"run-b"}
