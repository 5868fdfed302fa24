"""Per-video leases in the output storage, so that runs over the same output (a nightly run and a
manual one, or a nightly run that is still going when the next starts) never restore one video at
once. A run claims each video it is about to restore; a video another live run holds is skipped and
left to that run.

    <output>/_ledger/_runs/<run id>.json                {run, name, host, pid, cluster, node, started_at,
                                                         expires_at, finished}
    <output>/_ledger/_leases/<key of rel>/<gen>.json    {run, rel, at}: the newest generation holds the video

A lease is held while the run that wrote the newest generation is alive: its heartbeat file says
`finished: false` and an `expires_at` still ahead (the run rewrites it every `ttl / 5`), and, when
the run is on this very machine, its process still exists. So a run that ends frees all its leases
at once, and a run that crashed (killed driver, lost node) frees them when its heartbeat expires, or
at once for a retry of the same submission and where its node is known lost (liveness.py).

Claiming writes generation n + 1 with a create-if-absent put (`storage.create_exclusive`: an
exclusive hard link on local disk, a conditional put on S3 and GCS): of two runs that race for a
video, exactly one creates it. Generations only grow (older ones are deleted, the newest never), so
a freed lease can never be claimed twice by starting again from 0.

Clocks: expiry is the holder's clock compared with the reader's; keep clocks in sync (NTP) to well
within `ttl`. A run that stalls for longer than `ttl` loses its leases, and learns it at the fence
(`check_held`) before publishing an output, writing a ledger row or clearing staging: it does none
of these for a video another run has taken over. The worst that follows is the same window restored
twice into the same (atomic, identical) staging segment, never a torn file.
To free the leases of a run you know is dead before they expire, delete its `_runs/<run id>.json`.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pipelines import storage
from pipelines.restore.context import RestoreRun
from pipelines.restore.liveness import alive as run_alive
from pipelines.restore.liveness import ray_location, this_process

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(minutes=10)
_CLAIM_TRIES = 3

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Leases:
    """This run's heartbeat, which keeps its claims (`claim_video`) alive. Use as a context manager
    around the work:

        with Leases(run) as leases:
            ...claim_video(run, rel) as the run starts on each video, restore what it got...

    Entering writes the heartbeat and starts renewing it; leaving (normally or by an exception)
    marks the run finished, which frees every lease it holds.
    """

    def __init__(self, run: RestoreRun, ttl: timedelta = DEFAULT_TTL, clock: Clock = _utc_now):
        if ttl <= timedelta(0):
            raise ValueError(f"lease time {ttl} must be positive")
        self.run, self.run_id, self.ttl, self.clock = run, run.run_id, ttl, clock
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- heartbeat ---------------------------------------------------------------------------------

    def __enter__(self) -> Leases:
        self._beat(finished=False)
        self._thread = threading.Thread(target=self._renew, name=f"lease-heartbeat-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._beat(finished=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 5):
            try:
                self._beat(finished=False)
            except Exception:  # noqa: BLE001 - a store hiccup; the next beat tries again, well before expiry
                log.warning("could not renew the heartbeat of run %s", self.run_id, exc_info=True)

    def renew(self) -> None:
        """Renew the heartbeat now: once Ray is up, so that it names this driver's cluster and node
        (`liveness`: a retry on that cluster takes over at once if the node is lost)."""
        self._beat(finished=False)

    def _beat(self, *, finished: bool) -> None:
        now = self.clock()
        record = {"run": self.run_id, "name": self.run.name, **this_process(), **ray_location(),
                  "started_at": self.started_at.isoformat(), "expires_at": (now + self.ttl).isoformat(),
                  "finished": finished}
        storage.write_bytes_atomic(self.run.layout.run_file(self.run_id), json.dumps(record).encode())


@dataclass(frozen=True)
class Claim:
    """What claiming one video got."""

    mine: bool
    holder: str = ""  # not mine: the live run that holds it, or the run that finished it (`done`)
    done: bool = False  # not mine: `holder` finished it, for the same source and settings
    taken_over: bool = False  # mine, from a run that has ended or died since


def claim_video(run: RestoreRun, rel: str, fingerprint: str = "", *, clock: Clock = _utc_now,
                alive: Callable[[str], bool] | None = None) -> Claim:
    """Claim one video for `run`, as the run starts on it (so runs share a backlog): a listing, a
    read or two and one conditional put. A video whose newest lease record says it was finished for
    this `fingerprint` and the run's settings (`record_finished`) after `run.read_at` (when this run
    read the ledger) is not claimed: another run did it since. (One finished before is in the ledger:
    if this run restores it anyway, its output was found gone.)"""
    alive = alive or _AliveCache(run, clock)
    run_id, done_key = run.run_id, run.done_key(fingerprint) if fingerprint else ""
    folder = run.layout.lease_folder(rel)
    for _ in range(_CLAIM_TRIES):
        generations = _generations(folder)
        taken_over = False
        if generations:
            newest = _read_json(_generation_url(folder, generations[-1]))
            holder = newest.get("run", "")
            if holder == run_id:
                return Claim(mine=True)
            if done_key and newest.get("done") == done_key and _time(newest) > run.read_at:
                return Claim(mine=False, holder=holder, done=True)
            if alive(holder):
                return Claim(mine=False, holder=holder)
            taken_over = True
        record = {"run": run_id, "rel": rel, "at": clock().isoformat()}
        if _put_next(folder, generations, record):
            return Claim(mine=True, taken_over=taken_over)
        # Another run created that generation first: look again, it is probably alive.
    return Claim(mine=False, holder="another run (the lease kept changing while claiming it)")


def record_finished(run: RestoreRun, rel: str, fingerprint: str) -> None:
    """Note in the video's lease that `run` finished it for `fingerprint` and its settings, so a run that
    read the ledger before does not restore it again. Only while `run` holds the lease."""
    folder = run.layout.lease_folder(rel)
    generations = _generations(folder)
    if generations and _read_json(_generation_url(folder, generations[-1])).get("run") == run.run_id:
        _put_next(folder, generations, {"run": run.run_id, "rel": rel, "at": _utc_now().isoformat(),
                                        "done": run.done_key(fingerprint)})


def _time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["at"])


def _put_next(folder: str, generations: Sequence[int], record: dict[str, Any]) -> bool:
    """Create the generation after `generations` with `record`; True if this call created it."""
    following = generations[-1] + 1 if generations else 0
    if not storage.create_exclusive(_generation_url(folder, following), json.dumps(record).encode()):
        return False
    for old in generations:  # never the newest: generations must only grow
        storage.remove(_generation_url(folder, old))
    return True


def live_holder(run: RestoreRun, rel: str, clock: Clock = _utc_now) -> tuple[str, datetime | None] | None:
    """(run id, heartbeat expiry) of the other live run that holds `rel`, or None when `run` could
    claim it now (free, ended or dead holder). The expiry tells a holder that renews (alive, working)
    from one that stopped (its driver or head lost: free once it expires); it is None for a holder
    whose process is running on this machine, which is alive for sure."""
    folder = run.layout.lease_folder(rel)
    generations = _generations(folder)
    if not generations:
        return None
    holder = _read_json(_generation_url(folder, generations[-1])).get("run", "")
    record = _read_json(run.layout.run_file(holder)) if holder and holder != run.run_id else {}
    if not run_alive(record, clock(), run.name, run.run_id):
        return None
    here = record.get("host") == this_process()["host"] and record.get("pid") is not None
    return holder, None if here else datetime.fromisoformat(record["expires_at"])


class LeaseLost(Exception):
    """This run no longer holds a video's lease: it stalled past the lease time and another run took
    the video over. It must not publish the output nor write a ledger row for it."""


def check_held(run: RestoreRun, rel: str) -> None:
    """Raise LeaseLost unless `run` holds the lease of `rel` (wrote its newest generation).
    The fence a run passes before each write that makes a video's outcome visible."""
    folder = run.layout.lease_folder(rel)
    generations = _generations(folder)
    holder = _read_json(_generation_url(folder, generations[-1])).get("run") if generations else None
    if holder != run.run_id:
        raise LeaseLost(f"run {run.run_id} lost the lease of {rel} to {holder or 'nobody'} (it stalled past the lease "
                        f"time); that run restores it")


class _AliveCache:
    """Is a run alive? Read once per run per claim pass: thousands of leases share a few runs."""

    def __init__(self, run: RestoreRun, clock: Clock):
        self.run, self.clock = run, clock
        self.known: dict[str, bool] = {}
        self.lock = threading.Lock()

    def __call__(self, run_id: str) -> bool:
        with self.lock:
            if run_id not in self.known:
                record = _read_json(self.run.layout.run_file(run_id))
                self.known[run_id] = run_alive(record, self.clock(), self.run.name, self.run.run_id)
            return self.known[run_id]


def _generations(folder: str) -> list[int]:
    fs, path = storage.filesystem(folder)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    numbers = []
    for name in names:
        stem, ext = posixpath.splitext(posixpath.basename(name.rstrip("/")))
        if ext == ".json" and stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def _generation_url(folder: str, generation: int) -> str:
    return storage.join(folder, f"{generation:012d}.json")


def _read_json(url: str) -> dict[str, Any]:
    """The record at `url`; {} when it is gone (a generation deleted by a newer claim, a run file
    deleted by hand)."""
    try:
        return json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        return {}
