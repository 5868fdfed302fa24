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
from collections.abc import Callable

import ray
from fsspec.implementations.local import LocalFileSystem
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.job_support import ConfigError
from pipelines.storage import filesystem

PROBE_SECONDS = 120.0  # how long the probe tasks may take to be scheduled and read the file


def check_shared(url: str, flag: str, *, writable: bool = True) -> None:
    """Raise `ConfigError` when `url` is a local folder that some alive node of the Ray cluster this
    process is connected to does not see as the driver does. Buckets, and one-node clusters, pass.

    A folder the job writes (`writable`) is proven shared by a probe file written here and read back on
    every node. One it only reads (weights, which may be a read-only mount) is never written to: every
    node must see the same names at its top (identical copies on each node are as good as a mount)."""
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        return
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if writable:
        os.makedirs(path, exist_ok=True)
        token = uuid.uuid4().hex
        probe = os.path.join(path, f".star-shared-probe-{token[:12]}")
        with open(probe, "w") as f:
            f.write(token)
        try:
            seen = _seen_on(nodes, _read, probe)
        finally:
            os.remove(probe)
    else:
        token, seen = _names(path), _seen_on(nodes, _names, path)
    blind = [node["NodeManagerAddress"] for node, view in zip(nodes, seen) if view != token]
    if blind:
        raise ConfigError(f"{flag} {url} is a local folder that {len(blind)} of the cluster's {len(nodes)} nodes "
                          f"({', '.join(sorted(blind))}) do not see: on a cluster the job's folders must be shared "
                          f"by every node; use a bucket (gs://, s3://) or a folder mounted on every node (NFS, FUSE)")


def _seen_on(nodes: list[dict], look: Callable[[str], str | None], path: str) -> list[str | None]:
    """What `look(path)` gives on each node."""
    task = ray.remote(num_cpus=0, max_retries=0)(look)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(path)
            for node in nodes]
    try:
        return ray.get(refs, timeout=PROBE_SECONDS)
    except ray.exceptions.GetTimeoutError as e:
        raise ConfigError(f"could not check that {path} is shared by every node: the probe tasks did not finish "
                          f"in {PROBE_SECONDS:.0f} s") from e


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _names(path: str) -> str | None:
    """The sorted names at the top of the folder `path`, one per line (None if it cannot be listed)."""
    try:
        return "\n".join(sorted(os.listdir(path)))
    except OSError:
        return None
