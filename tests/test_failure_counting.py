"""Which failures count toward "the same failure three runs in a row is permanent" (outcome.failure):
a source's own reasons do; the run's (the stream stopped, windows lost with their nodes) never do."""

from __future__ import annotations

from pipelines.restore.faults import lost_windows
from pipelines.restore.outcome import GIVE_UP_AFTER, failure
from pipelines.restore.rows import PREVIOUS_ERROR, REPEATS


def test_the_same_reason_of_the_source_becomes_permanent_on_the_third_run():
    reason = "window 0 (frames 0-7): killed its restore actor 2 times"
    video = {PREVIOUS_ERROR: "", REPEATS: 0}
    for night in range(1, GIVE_UP_AFTER + 1):
        error, permanent, repeats = failure(reason, False, video)
        assert (repeats, permanent) == (night, night == GIVE_UP_AFTER)
        video = {PREVIOUS_ERROR: error, REPEATS: repeats}
    assert error.startswith(reason) and "no longer retried" in error


def test_a_reason_of_the_run_never_counts():
    reason = lost_windows(3, [0])
    assert reason.startswith("windows 1, 2 of 3 never came back") and "not held against the source" in reason
    # even after the same run-level failure on the runs before, with the count at the threshold
    video = {PREVIOUS_ERROR: reason, REPEATS: GIVE_UP_AFTER - 1}
    assert failure(reason, False, video, counted=False) == (reason, False, 0)
    stopped = "the restore stage stopped: ExecutionTimeoutError: no progress"
    assert failure(stopped, False, {PREVIOUS_ERROR: stopped, REPEATS: 5}, counted=False) == (stopped, False, 0)
