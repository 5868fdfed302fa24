"""The check that a job's local folders are shared by every node of a multi-node Ray cluster
(`pipelines.shared_storage`), on a real two-node cluster started on this machine."""

from __future__ import annotations

import pytest
import ray

from pipelines import shared_storage
from pipelines.job_support import ConfigError
from pipelines.shared_storage import check_shared

pytestmark = pytest.mark.timeout(180)


def test_a_folder_every_node_sees_passes_and_leaves_nothing(two_nodes, tmp_path):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    check_shared(str(tmp_path / "out"), "--output")  # one machine: both nodes see the same disk
    assert list((tmp_path / "out").iterdir()) == []


def test_a_node_that_does_not_see_the_folder_is_refused_before_any_work(two_nodes, tmp_path, monkeypatch):
    # Both nodes of a one-machine cluster share its disk: the second node's view of a private disk
    # is simulated (the probe tasks themselves ran on both nodes in the test above).
    seen = shared_storage._seen_on
    monkeypatch.setattr(shared_storage, "_seen_on", lambda nodes, look, path: seen(nodes, look, path)[:1] + [None])
    with pytest.raises(ConfigError, match=r"--output .* is a local folder that 1 of the cluster's 2 nodes .* do not "
                                          r"see: .* use a bucket"):
        check_shared(str(tmp_path / "out"), "--output")
    assert list((tmp_path / "out").iterdir()) == []  # the probe file is gone


def test_a_read_only_folder_is_compared_by_its_names_never_written(two_nodes, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    (weights / "star").mkdir(parents=True)
    weights.chmod(0o555)  # a read-only mount (as root, only the names are compared: nothing is written)
    check_shared(str(weights), "--weights", writable=False)
    assert [p.name for p in weights.iterdir()] == ["star"]
    seen = shared_storage._seen_on
    monkeypatch.setattr(shared_storage, "_seen_on", lambda nodes, look, path: seen(nodes, look, path)[:1] + ["other"])
    with pytest.raises(ConfigError, match=r"--weights .* is a local folder that 1 of the cluster's 2 nodes"):
        check_shared(str(weights), "--weights", writable=False)


def test_buckets_are_not_probed(two_nodes, monkeypatch):
    monkeypatch.setattr(shared_storage, "_seen_on", lambda nodes, look, path: pytest.fail("a bucket was probed"))
    check_shared("memory://bucket/out", "--output")
