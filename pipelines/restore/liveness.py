"""Is the run behind a heartbeat (`lease.Leases`) alive? Its heartbeat says so until it expires; a
run judges sooner, and takes the dead run's videos over at once, when it knows better:

- the holder ran on this machine (same host and PID namespace) and its process is gone;
- the holder is an earlier try of this run's own submission: the same run name (`--run-name`, by
  default the Ray job submission id), an older run id. A RayJob retry, or a scheduled name submitted
  again, starts only once the try before it failed (a lost driver or head), so that try is dead;
  a newer try of the same name is not (so two tries of one name never take videos back and forth);
- the holder's driver ran on a node of this Ray cluster (the same GCS address) that the cluster no
  longer counts as alive (`ray.nodes()`): a lost node, or a head restarted without the old node.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Any

import ray


def alive(record: dict[str, Any], now: datetime, name: str = "", run_id: str = "") -> bool:
    """Whether the run of heartbeat `record` is alive, as judged by the run `run_id` of run name
    `name` (both "" to judge by the heartbeat alone)."""
    if not record or record.get("finished", True):
        return False  # no heartbeat (deleted by hand, or never written) or a finished run
    if datetime.fromisoformat(record["expires_at"]) <= now:
        return False  # crashed: stopped renewing
    if name and record.get("name") == name and record.get("run", "") < run_id:
        return False  # an earlier try of this submission (run ids sort by start time)
    if _node_lost(record):
        return False
    here = this_process()
    if record.get("host") == here["host"] and record.get("pid") is not None:
        # Same machine and same PID namespace: a vanished process is dead now, no need to wait
        # for the expiry (a killed local run, a restarted head pod that kept its hostname).
        return _pid_exists(int(record["pid"]))
    return True


def this_process() -> dict[str, Any]:
    """Where this run's driver lives. `host` includes the PID namespace on Linux, so two containers
    that share a hostname (host networking) never judge each other's PIDs."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return {"host": f"{socket.gethostname()}/{namespace}", "pid": os.getpid()}


def ray_location() -> dict[str, str]:
    """This process's Ray cluster (its GCS address) and node, for its heartbeat; {} before Ray starts."""
    if not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    return {"cluster": context.gcs_address, "node": context.get_node_id()}


def _node_lost(record: dict[str, Any]) -> bool:
    """The heartbeat names a node of the cluster this process is on, and that node is not alive. A
    node of another cluster (another run sharing the output) is never judged from here."""
    if not record.get("node") or not ray.is_initialized():
        return False
    if record.get("cluster") != ray.get_runtime_context().gcs_address:
        return False
    return record["node"] not in {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
