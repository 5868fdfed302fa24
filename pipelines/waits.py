"""A job's resource request against what Ray has, so that no job waits in silence: when this process
started Ray itself (a local cluster, no autoscaler to add nodes) a request that can never be met
fails at once, saying what to change; on a cluster the job waits for the autoscaler and logs, every
minute, what it is waiting for."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import ray

log = logging.getLogger(__name__)

WAIT_LINE_SECONDS = 60.0


def started_here() -> bool:
    """True when `ray.init()` in this process started the cluster (it is then the head node) rather
    than connecting to a running one (`ray job submit`, RAY_ADDRESS, `ray start`)."""
    node = ray._private.worker._global_node  # no public API says which of the two ray.init() did
    return node is not None and bool(node.head)


def shortfall(need: Mapping[str, float]) -> dict[str, float]:
    """The resources of `need` that the cluster's total (busy or not) does not reach, with the total."""
    total = ray.cluster_resources()
    return {name: total.get(name, 0.0) for name, amount in need.items() if total.get(name, 0.0) < amount}


def check_can_start(need: Mapping[str, float], what: str, fix: str) -> None:
    """Raise ValueError when Ray was started by this process and can never hold `need`."""
    short = shortfall(need)
    if short and started_here():
        have = ", ".join(f"{amount:g} {name}" for name, amount in short.items())
        raise ValueError(f"{what} needs {_describe(need)}, but the Ray this job started on this machine has "
                         f"{have} and no autoscaler to add more, so it would wait for ever: {fix}")


@contextmanager
def waiting_lines(need: Mapping[str, float], what: str, every_s: float = WAIT_LINE_SECONDS) -> Iterator[None]:
    """While the block runs, log every `every_s` seconds what the job waits for, as long as the
    cluster's total resources do not reach `need` (an autoscaler is expected to add nodes)."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every_s):
            short = shortfall(need)
            if short:
                have = ", ".join(f"{amount:g} {name}" for name, amount in short.items())
                log.warning("waiting for resources: %s needs %s and the cluster has %s; waiting for the "
                            "autoscaler to add nodes (see `ray status`)", what, _describe(need), have)

    thread = threading.Thread(target=report, name="waiting-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _describe(need: Mapping[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in need.items())
