"""Which listed sources a run restores, decided against the ledger's state (`ledger.read_state`): the
rule that makes resume and nightly incremental runs the same mechanism, and that knows a copied
source by its content; and which it refuses on the driver (`split_clashes`: unsafe keys, outputs
that would collide)."""

from __future__ import annotations

import collections
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import listing
from pipelines.listing import SourceFile, listed_size
from pipelines.restore.ledger import now
from pipelines.restore.rows import (CHECKSUM, CONTENT, DONE, ERROR, FAILED, FINGERPRINT, FINISHED_AT, PERMANENT, REL,
                                    REPEATS, RUN_ID, SETTINGS, SOURCE, STATUS)


@dataclass(frozen=True)
class Selection:
    todo: list[SourceFile]
    done: list[SourceFile]  # restored before with these settings, output still there
    bad: list[tuple[SourceFile, str]]  # unchanged sources that failed for good before, with the reason
    copied: Sequence[tuple[SourceFile, dict[str, Any]]] = ()  # done or bad, known by content under a new fingerprint
    # {rel: (reason, runs in a row)} of `todo` sources the last run failed, unchanged since
    failed_before: dict[str, tuple[str, int]] = field(default_factory=dict)


Digests = Callable[[Sequence[SourceFile]], dict[str, str]]
"""{rel: "sha256:..."} of the given sources' content (read on the driver)."""

MissingOutputs = Callable[[pa.Table, np.ndarray], set[str]]
"""Of the done videos a run would skip (the state and their rows in it), the rels whose output is gone
or was replaced."""


def select(sources: Sequence[SourceFile], state: pa.Table, settings: str, *,
           video_settings: Mapping[str, str] | None = None, retry_failed: bool = False,
           digests: Digests | None = None, missing_outputs: MissingOutputs | None = None) -> Selection:
    """Which sources this run restores: those never done for their content and these settings (a
    video's own key in `video_settings`, by rel, where it has one).
    Resume and nightly incremental runs are the same rule. A done video whose output was deleted
    or replaced since (`missing_outputs`, asked about the done ones only) is restored again; a source
    that failed for good (`permanent`: not a video, truncated, ...) is retried only when it changes,
    or with `retry_failed`; other failures (out of memory, storage errors) are always retried.

    A source is known by its fingerprint (size and etag or mtime: free to list); when that changed
    but the size did not, by its content: the store's checksum if both sides have one of a kind,
    else its SHA-256 (`digests`, read only for these). So a copied archive (`cp -r`, another bucket
    or part size) is recognised instead of restored again; the caller records the new fingerprint
    (`copied`) so the next run knows it for free.

    Columnar (`state` is `read_state`'s table): a million known videos are decided in seconds, and
    only the few that changed become Python rows.
    """
    # The state's row of each source (a hash lookup, no join: only the deciding columns are taken, for
    # the known sources; whole rows only for the few that need them).
    at = pc.index_in(pa.array([s.rel for s in sources], pa.string()), value_set=state[REL])
    index = np.flatnonzero(pc.is_valid(at).to_numpy(zero_copy_only=False))
    at = pc.drop_null(at).to_numpy(zero_copy_only=False).astype(np.int64)
    if video_settings:  # videos with a key of their own (a prompt of their own: RestoreRun.key_for)
        wanted = pa.array([video_settings.get(sources[i].rel, settings) for i in index], pa.string())
    else:
        wanted = settings
    ours = pc.fill_null(pc.equal(state[SETTINGS].take(at), wanted), False).to_numpy(zero_copy_only=False)
    index, at = index[ours], at[ours]
    listed = pc.binary_join_element_wise(pc.cast(pa.array([sources[i].size for i in index]), pa.string()),
                                         pa.array([sources[i].version for i in index], pa.string()), ":")
    unchanged = pc.fill_null(pc.equal(listed, state[FINGERPRINT].take(at)), False).to_numpy(zero_copy_only=False)
    del listed
    same = unchanged.copy()  # unchanged, or a copy of what was recorded
    moved = np.flatnonzero(~unchanged)
    copies = _copies([sources[i] for i in index[moved]], _rows(state, at[moved]), digests)
    if copies:
        same[moved] = [sources[i].rel in copies for i in index[moved]]
    status = state[STATUS].take(at)
    done = same & pc.equal(status, DONE).to_numpy(zero_copy_only=False)
    failed = same & pc.equal(status, FAILED).to_numpy(zero_copy_only=False)
    permanent = pc.fill_null(state[PERMANENT].take(at), False).to_numpy(zero_copy_only=False)
    del status
    if missing_outputs is not None and done.any():
        done_at = np.flatnonzero(done)
        gone = missing_outputs(state, at[done_at])
        if gone:
            done[done_at] = [sources[i].rel not in gone for i in index[done_at]]
    bad = failed & permanent & (not retry_failed)
    retried = np.flatnonzero(failed & ~bad)
    failed_before = {row[REL]: (row[ERROR], row[REPEATS] or 1) for row in _rows(state, at[retried])}
    decided = np.zeros(len(sources), bool)
    decided[index[done | bad]] = True
    bad_at = np.flatnonzero(bad)
    copied_at = np.flatnonzero((done | bad) & ~unchanged)
    return Selection(todo=[s for s, skip in zip(sources, decided) if not skip],
                     done=[sources[i] for i in index[done]],
                     bad=[(sources[i], row[ERROR]) for i, row in zip(index[bad_at], _rows(state, at[bad_at]))],
                     copied=[(sources[i], row) for i, row in zip(index[copied_at], _rows(state, at[copied_at]))],
                     failed_before=failed_before)


def _rows(state: pa.Table, at: np.ndarray) -> list[dict[str, Any]]:
    """Rows `at` of the state, as Python rows."""
    return state.take(pa.array(at, type=pa.int64())).to_pylist()


def _copies(moved: Sequence[SourceFile], rows: Sequence[dict[str, Any]], digests: Digests | None) -> set[str]:
    """The rels of `moved` sources (new fingerprint; `rows` their ledger rows) whose content is still
    the recorded one."""
    same, unsure = set(), []
    recorded = {row[REL]: row for row in rows}
    for source in moved:
        row = recorded[source.rel]
        if listed_size(row[FINGERPRINT]) != source.size:
            continue  # another size: changed
        kind = source.checksum.split(":", 1)[0]
        if source.checksum and (row[CHECKSUM] or "").startswith(f"{kind}:"):
            if row[CHECKSUM] == source.checksum:
                same.add(source.rel)
        elif row[CONTENT] and digests is not None:
            unsure.append(source)
    if unsure:
        contents = digests(unsure)
        same.update(s.rel for s in unsure if contents[s.rel] == recorded[s.rel][CONTENT])
    return same


def recognised_rows(copied: Sequence[tuple[SourceFile, dict[str, Any]]], run_id: str) -> list[dict[str, Any]]:
    """The ledger rows that record copies under their new fingerprints (same outcome, this run)."""
    return [{**row, SOURCE: source.url, FINGERPRINT: source.fingerprint, CHECKSUM: source.checksum or row.get(CHECKSUM),
             RUN_ID: run_id, FINISHED_AT: now()} for source, row in copied]


def split_clashes(todo: Sequence[SourceFile], sources: Sequence[SourceFile], output_root: str
                   ) -> tuple[list[SourceFile], list[tuple[SourceFile, str, bool]]]:
    """(sources to restore, [(source, reason, permanent)] for those refused on the driver): keys that
    could write outside the output (`listing.unsafe_key`: refused for good while unchanged), and
    sources whose outputs would collide ("a.mov" and "a.mp4" both restore to "a.mp4"; "A.mp4" and
    "a.mp4" on an output that folds case; "caf%E9.mp4" and the `listing.escaped_name` of a Latin-1
    "caf\xe9.mp4", one rel for two files), retried on every run, so renaming one of them fixes it."""
    fold = str.casefold if listing.case_insensitive(output_root) else str
    by_stem = collections.defaultdict(list)
    for s in sources:
        by_stem[fold(posixpath.splitext(s.rel)[0])].append(s)
    keep, refused = [], []
    for s in todo:
        unsafe = listing.unsafe_key(s.rel)
        # another file of the same rel is named by its URL (the escaped name's is its real name's bytes)
        others = [o.rel if o.rel != s.rel else o.url for o in by_stem[fold(posixpath.splitext(s.rel)[0])]
                  if o.url != s.url]
        if unsafe:
            refused.append((s, f"unsafe object key {s.rel!r}: {unsafe}; rename the object", True))
        elif others:
            refused.append((s, f"output name clashes with {', '.join(others)} (same name, other extension or "
                               f"case, or a name that is not UTF-8, escaped); rename one of them", False))
        else:
            keep.append(s)
    return keep, refused
