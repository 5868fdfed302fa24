"""On a Ray cluster of more than one node, the folders a job writes must be the same folder on every
node: the restore job stages segments on one worker, assembles them on another and records the ledger
from a third; fine-tuning checkpoints from every worker. A bucket is; a local path is only when it is
a shared mount (NFS, a FUSE mount of a bucket). A node-local disk is refused before any work starts,
instead of every video failing at assembly with `FileNotFoundError` and the next run redoing it all.

Checked once Ray is up (the nodes are known only then): a probe file written on the driver must be
read back, with its content, by a task pinned to each alive node. Nodes an autoscaler adds later are
not checked: mount the folder in the node image (cluster/) or use a bucket.
"""

from __future__ import annotations

import os
import uuid

import ray
from fsspec.implementations.local import LocalFileSystem
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.job_support import ConfigError
from pipelines.storage import filesystem

PROBE_SECONDS = 120.0  # how long the probe tasks may take to be scheduled and read the file


def check_shared(url: str, flag: str) -> None:
    """Raise `ConfigError` when `url` is a local folder that some alive node of the Ray cluster this
    process is connected to does not see as the driver does. Buckets, and one-node clusters, pass."""
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        return
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    os.makedirs(path, exist_ok=True)
    token = uuid.uuid4().hex
    probe = os.path.join(path, f".star-shared-probe-{token[:12]}")
    with open(probe, "w") as f:
        f.write(token)
    try:
        blind = [node["NodeManagerAddress"] for node, seen in zip(nodes, _seen_on(nodes, probe)) if seen != token]
    finally:
        os.remove(probe)
    if blind:
        raise ConfigError(f"{flag} {url} is a local folder that {len(blind)} of the cluster's {len(nodes)} nodes "
                          f"({', '.join(sorted(blind))}) do not see: on a cluster the job's folders must be shared "
                          f"by every node; use a bucket (gs://, s3://) or a folder mounted on every node (NFS, FUSE)")


def _seen_on(nodes: list[dict], probe: str) -> list[str | None]:
    """What each node reads at `probe` (None where the file is not there)."""
    read = ray.remote(num_cpus=0, max_retries=0)(_read)
    refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(probe)
            for node in nodes]
    try:
        return ray.get(refs, timeout=PROBE_SECONDS)
    except ray.exceptions.GetTimeoutError as e:
        raise ConfigError(f"could not check that {os.path.dirname(probe)} is shared by every node: the probe tasks "
                          f"did not finish in {PROBE_SECONDS:.0f} s") from e


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None
