"""Which windows were inside a restore actor when it died: a small record beside the window's segment,
written as a try starts and removed as it ends, so that a try that finds one knows the earlier tries
of this run killed their actor (a decoder crash on that file, a host out-of-memory kill).

Ray restarts a dead actor and retries its windows; a window that kills every actor it reaches would
otherwise spend the retries of whatever else that actor held, and end as "never came back", a reason
no one can act on. With this record the window fails alone, as a row naming itself, and its video
fails alone with it. Tries on a node that is gone since (preemption, a lost node) are not counted:
losing a node says nothing about the window.
"""

from __future__ import annotations

import json
from typing import Any

import ray

from pipelines import storage

# A window whose tries killed their actor this many times fails (the last of them restored alone in
# its actor, so no other window shares the blame); Ray Data retries the task once more to say so.
ACTOR_KILLS = 2

KILLED_REASON = (f"killed its restore actor {ACTOR_KILLS} times, the last time restored alone (a crash in "
                 f"decoding or restoring it, or out of host memory; see the Ray logs of the restore actors)")


def _record_url(segment: str) -> str:
    return f"{segment}.tries.json"


def earlier_kills(segment: str, run_id: str) -> list[dict[str, Any]]:
    """The tries of this window in this run that died with their actor, on a node still alive."""
    try:
        tries = json.loads(storage.read_bytes(_record_url(segment)))
    except FileNotFoundError:  # the usual case: no try of it died
        return []
    mine = [t for t in tries if t["run"] == run_id]  # an earlier run's tries: that run may have had a bug fixed since
    if not mine:
        return []
    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    return [t for t in mine if t["node"] in alive]


def started(segment: str, run_id: str, node: str, earlier: list[dict[str, Any]]) -> None:
    """Record a try of the window on `node` (`earlier`: `earlier_kills` as this try found them)."""
    tries = [*earlier, {"run": run_id, "node": node}]
    storage.write_bytes_atomic(_record_url(segment), json.dumps(tries).encode())


def ended(segment: str) -> None:
    """The try returned (done or failed): its actor survived it."""
    storage.remove(_record_url(segment))
