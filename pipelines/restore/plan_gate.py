"""Planning paced by restoring: at most a few videos are planned (claimed, probed, cut into windows)
ahead of the restore actors.

Ray Data's backpressure counts bytes in the object store, and a window row is ~1.6 KB: left alone,
the scenes stage planned 250,000 windows against 343 restored in 90 s, claimed the leases of the
whole backlog at the start, and a run that stopped left every planned video to be decoded again.
So each video takes a ticket from a `PlanGate` (one small actor of the run) before its scenes task
starts, and the driver gives it back once the video's last window has come out of the restore stage
(`gather`). Tickets: one per restore actor, plus `AHEAD` videos planned in advance, so that no actor
waits for planning. The ticket is taken in a task of its own that holds no CPU (`admit`), so videos
that wait for one hold no slot a scenes task, a restore actor or an assembly needs.

A video whose rows never come back (its scenes task died each try, a block lost) keeps its ticket
until the run ends: the run goes on with one video less planned ahead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

AHEAD = 2  # videos planned beyond one per restore actor


@ray.remote(num_cpus=0)
class PlanGate:
    """The run's tickets (an async actor: waiting callers cost a coroutine each, no thread)."""

    def __init__(self, tickets: int):
        assert tickets >= 1, tickets
        self.free = tickets
        self.changed = asyncio.Condition()

    async def enter(self) -> None:
        """Take a ticket, waiting until one is free."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.free > 0)
            self.free -= 1

    async def leave(self) -> None:
        """Give a ticket back (a video's rows are all out of the restore stage)."""
        async with self.changed:
            self.free += 1
            self.changed.notify()


def tickets(actors: int) -> int:
    """Videos planned and not yet restored, at most, for a pool of at most `actors`."""
    return actors + AHEAD


def admit(row: dict[str, Any], *, gate: ray.actor.ActorHandle) -> dict[str, Any]:
    """A source row, once its video has a ticket (a Ray Data task of 0 CPUs, before the scenes stage)."""
    ray.get(gate.enter.remote())
    return row
