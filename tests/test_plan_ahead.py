"""The bounded plan stage (issue 28 point 4): a video is planned only with a ticket of the run's
`PlanGate`, given back as its windows leave the restore stage; and a video's plan is kept, so that the
run after one that did not finish it reads the plan instead of decoding the source again."""

from __future__ import annotations

import ray

from helpers import media, restore_run, shrink
from pipelines.listing import list_sources
from pipelines.restore.plan_gate import PlanGate, admit
from pipelines.restore.plan_stage import claim_and_plan
from pipelines.restore.rows import FAILED, PENDING, STATUS

PLAN = dict(window=8, overlap=2, detector="content")


def test_a_video_an_unfinished_run_planned_is_not_decoded_again(tmp_path):
    archive, output = tmp_path / "archive", tmp_path / "out"
    shrink(media("lq/dove_002.mp4"), archive / "dove.mp4", (80, 46), 32)
    (listed,) = list_sources(str(archive))[0]
    row = {"source": listed.url, "rel": listed.rel, "fingerprint": listed.fingerprint, "checksum": "",
           "previous_error": "", "repeats": 0}
    first = claim_and_plan(row, run=restore_run(output, "run-1"), **PLAN)
    assert len(first) == 5 and {r[STATUS] for r in first} == {PENDING}
    # Same size, other bytes: only a plan read without decoding still gives the windows.
    (archive / "dove.mp4").write_bytes(bytes(listed.size))
    again = claim_and_plan(row | {"previous_error": "out of memory", "repeats": 1}, run=restore_run(output, "run-2"),
                           **PLAN)
    assert again == [r | {"previous_error": "out of memory", "repeats": 1} for r in first]
    # A plan is for one limit of frame pixels: under another, the source is decoded again (and fails here).
    (failed,) = claim_and_plan(row, run=restore_run(output, "run-3"), **PLAN, max_pixels=10**6)
    assert failed[STATUS] == FAILED and failed["permanent"]


def test_a_video_waits_for_a_ticket_and_takes_the_one_given_back(local_ray):
    gate = PlanGate.remote(2)
    admitted = [ray.remote(num_cpus=0)(admit).remote({"rel": rel}, gate=gate) for rel in "abc"]
    ready, waiting = ray.wait(admitted, num_returns=3, timeout=5)
    assert len(ready) == 2 and len(waiting) == 1  # the third waits: both tickets are out
    ray.get(gate.leave.remote())  # a video's windows all left the restore stage
    assert ray.get(waiting[0], timeout=30)["rel"] in "abc"
