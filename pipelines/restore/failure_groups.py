"""The failed videos of a run in groups a user can act on (report.py): each ledger reason falls in the
first group that claims it, and each group says what to do, in the words of the messages the stages
write (plan_stage.py, restore_stage.py, window_attempts.py, faults.py, lease.py, outcome.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipelines.restore.faults import ACTOR_DIED
from pipelines.restore.outcome import GIVE_UP_AFTER
from pipelines.restore.window_attempts import ACTOR_KILLS


@dataclass(frozen=True)
class Group:
    name: str
    advice: str
    claims: Callable[[str, bool], bool]  # (reason, permanent) -> whether the reason is of this group


def _has(*parts: str) -> Callable[[str, bool], bool]:
    return lambda reason, _permanent: any(part in reason for part in parts)


_STORAGE_ERRORS = ("OSError", "IOError", "FileNotFoundError", "PermissionError", "ConnectionError", "TimeoutError",
                   "ClientError", "HttpError", "[Errno", "took longer than", "changed since the run listed it")

GROUPS = (
    Group("given up: the same failure run after run",
          f"The unchanged source failed the same way {GIVE_UP_AFTER} runs in a row and is no longer retried: fix "
          f"the cause its reason names, then run again with --retry-failed.",
          _has(f"the same failure {GIVE_UP_AFTER} runs in a row")),
    Group("out of GPU memory",
          "Set a smaller --window (fewer frames in the model at once) or use a GPU with more memory; the next "
          "run retries these videos.",
          _has("out of GPU memory")),
    Group("a window killed its actor",
          f"A window killed its restore actor {ACTOR_KILLS} times (a crash in decoding or restoring it, or out "
          f"of host memory): see the Ray logs of the restore actors; the next run tries it again.",
          _has(f"killed its restore actor {ACTOR_KILLS} times")),
    Group("lost with a node or actor",
          "A lost or preempted node, most likely, not held against the source: the next run restores these "
          "videos again (see the Ray logs if it repeats).",
          _has(ACTOR_DIED, "no window came back")),
    Group("lease: another run",
          "Another run holds the video or took it over after this run stalled past its lease time: that run "
          "restores it, or the next run does.",
          _has("the lease of", "its lease", "the lease kept")),
    Group("output names clash",
          "Two sources would write the same output, or a key could write outside the output: rename the "
          "sources named in the reason.",
          _has("output name clashes", "unsafe object key")),
    Group("bad input (permanent)",
          "The source itself cannot be restored as it is: copy it again from where it came from, or remux "
          "what is left (ffmpeg -i SOURCE -c copy OUT.mkv) and restore that; an unchanged file is not "
          "retried unless --retry-failed.",
          lambda _reason, permanent: permanent),
    Group("assembly",
          "Writing the output failed after its windows were restored: the next run assembles it again from "
          "the staged windows; see the Ray logs of the assembly task if it repeats.",
          _has("assembly:")),
    Group("storage or time limit (transient)",
          "Reading or writing storage failed or stalled: check that the input and output are reachable and "
          "writable from every node; the next run retries these videos.",
          _has(*_STORAGE_ERRORS)),
    Group("other",
          "Not held against the source: the next run retries these videos; the reason names the error (see "
          "the driver's log and the Ray logs).",
          lambda _reason, _permanent: True),
)


def group_failures(failures: Iterable[tuple[str, str, bool]]) -> list[tuple[Group, list[tuple[str, str]]]]:
    """[(group, [(rel, reason), ...]), ...] of `failures` (rel, reason, permanent), largest group first
    (then in `GROUPS` order); groups with no failure are left out."""
    found: dict[Group, list[tuple[str, str]]] = {}
    for rel, reason, permanent in failures:
        group = next(g for g in GROUPS if g.claims(reason or "", bool(permanent)))
        found.setdefault(group, []).append((rel, reason or ""))
    return sorted(found.items(), key=lambda item: (-len(item[1]), GROUPS.index(item[0])))
