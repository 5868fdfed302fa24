"""Per-video leases (pipelines/restore/lease.py) and the create-if-absent put under them, on local disk and
the S3 and GCS test servers: one winner per race, expiry of crashed runs, immediate release by a
finished run, and generations that only grow."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import claim_all, restore_run
from pipelines import storage
from pipelines.listing import SourceFile
from pipelines.restore.assemble_stage import finish_video
from pipelines.restore.layout import OutputLayout
from pipelines.restore.lease import LeaseLost, Leases, check_held, claim_video, record_finished
from pipelines.restore.plan_stage import failed_row
from pipelines.storage import atomic_output, create_exclusive, join, remove_empty_folders

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
TTL = timedelta(minutes=10)
SOURCES = [SourceFile(url=f"/archive/{n}.mp4", rel=f"reel/{n}.mp4", size=10, version="1") for n in "abcde"]


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server").fresh()


@pytest.fixture(params=["local", "s3"])
def atomic_root(request, tmp_path) -> str:
    """Stores whose test server enforces create-if-absent. gcp-storage-emulator ignores the
    `ifGenerationMatch=0` precondition that gcsfs sends (real GCS honours it), so races are not
    tested against it."""
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_server").fresh()


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def started(root: str, run_id: str, clock: Clock, name: str = "") -> Leases:
    """A run whose heartbeat is written but not renewed: what a crashed run leaves behind."""
    leases = Leases(restore_run(root, run_id, name=name), TTL, clock)
    leases._beat(finished=False)
    return leases


def elsewhere(root: str, run_id: str, **changes) -> None:
    """Make a run's heartbeat say its driver runs on another machine (so only its expiry, its name or
    its node can tell it dead), with `changes`."""
    record = json.loads(storage.read_bytes(OutputLayout(root).run_file(run_id)))
    storage.write_bytes_atomic(OutputLayout(root).run_file(run_id), json.dumps(
        {**record, "host": "elsewhere/pid:[1]", "pid": 999_999_999, **changes}).encode())


# -- create_exclusive ------------------------------------------------------------------------------


def test_create_exclusive_writes_once(root, request):
    if "gs" in request.node.callspec.id:
        pytest.skip("gcp-storage-emulator ignores ifGenerationMatch=0 (real GCS enforces it)")
    url = join(root, "lock", "a.json")
    assert create_exclusive(url, b"first")
    assert not create_exclusive(url, b"second")
    assert storage.read_bytes(url) == b"first"


def test_create_exclusive_has_one_winner_in_a_race(atomic_root):
    url = join(atomic_root, "lock", "race.json")
    barrier = threading.Barrier(12)
    results: list[bool] = []

    def contender(n: int) -> None:
        barrier.wait()
        results.append(create_exclusive(url, f"contender {n}".encode()))

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 11 + [True]
    assert storage.read_bytes(url).startswith(b"contender ")


def test_create_exclusive_leaves_no_temporary_files(tmp_path):
    url = str(tmp_path / "x.json")
    create_exclusive(url, b"1")
    create_exclusive(url, b"2")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# -- leases ----------------------------------------------------------------------------------------


def test_a_live_run_keeps_its_videos_and_a_finished_run_frees_them(root):
    clock = Clock()
    first = started(root, "run-a", clock)
    assert claim_all(first, SOURCES).mine == SOURCES
    assert claim_all(first, SOURCES).mine == SOURCES  # claiming again is harmless

    second = started(root, "run-b", clock)
    claims = claim_all(second, SOURCES)
    assert claims.mine == [] and [(s.rel, holder) for s, holder in claims.held] == [
        (s.rel, "run-a") for s in SOURCES]

    first._beat(finished=True)
    claims = claim_all(second, SOURCES)
    assert claims.mine == SOURCES and claims.taken_over
    assert json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a")))["finished"] is True


def test_a_crashed_run_holds_its_videos_until_its_heartbeat_expires(root):
    clock = Clock()
    claim_all(started(root, "run-a", clock), SOURCES[:2])
    clock.now = T0 + TTL - timedelta(seconds=1)
    assert claim_all(started(root, "run-b", clock), SOURCES).mine == SOURCES[2:]
    clock.now = T0 + TTL + timedelta(seconds=1)
    claims = claim_all(started(root, "run-c", clock), SOURCES)
    # run-b renewed nothing either: its claims (made at T0 + TTL - 1 s) are still live.
    assert claims.mine == SOURCES[:2] and {holder for _, holder in claims.held} == {"run-b"}


def test_a_dead_process_on_this_machine_frees_its_videos_at_once(tmp_path):
    root = str(tmp_path / "out")
    clock = Clock()
    claim_all(started(root, "run-a", clock), SOURCES)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                            text=True, check=True)
    record = json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a")))
    storage.write_bytes_atomic(OutputLayout(root).run_file("run-a"),
                               json.dumps({**record, "pid": int(exited.stdout)}).encode())
    assert claim_all(started(root, "run-b", clock), SOURCES).mine == SOURCES


def test_a_run_on_another_machine_is_trusted_until_expiry(tmp_path):
    root = str(tmp_path / "out")
    clock = Clock()
    claim_all(started(root, "run-a", clock), SOURCES)
    elsewhere(root, "run-a")
    assert claim_all(started(root, "run-b", clock), SOURCES).mine == []


def test_deleting_a_run_file_frees_its_leases(tmp_path):
    root = str(tmp_path / "out")
    clock = Clock()
    claim_all(started(root, "run-a", clock), SOURCES)
    storage.remove(OutputLayout(root).run_file("run-a"))
    assert claim_all(started(root, "run-b", clock), SOURCES).mine == SOURCES


def test_generations_only_grow_and_old_ones_are_removed(tmp_path):
    root = str(tmp_path / "out")
    clock = Clock()
    folder = Path(OutputLayout(root).lease_folder(SOURCES[0].rel))
    for n, run in enumerate(["run-a", "run-b", "run-c"]):
        leases = started(root, run, clock)
        assert claim_all(leases, SOURCES[:1]).mine == SOURCES[:1]
        leases._beat(finished=True)
        assert [p.name for p in folder.iterdir()] == [f"{n:012d}.json"]
    assert json.loads((folder / "000000000002.json").read_text())["run"] == "run-c"


def test_racing_runs_split_the_videos_without_overlap(atomic_root):
    """Eight runs claim the same videos at the same moment: each video goes to exactly one run."""
    clock = Clock()
    runs = [started(atomic_root, f"run-{n}", clock) for n in range(8)]
    barrier = threading.Barrier(len(runs))
    got: dict[str, list[str]] = {}

    def claim(leases: Leases) -> None:
        barrier.wait()
        got[leases.run_id] = [s.rel for s in claim_all(leases, SOURCES).mine]

    threads = [threading.Thread(target=claim, args=(leases,)) for leases in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = sorted(rel for rels in got.values() for rel in rels)
    assert winners == sorted(s.rel for s in SOURCES)


def test_the_heartbeat_is_renewed_and_finished_on_exit(tmp_path):
    root = str(tmp_path / "out")
    with Leases(restore_run(root, "run-a"), timedelta(seconds=0.5)) as leases:
        first = json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a")))["expires_at"]
        deadline = time.monotonic() + 5
        while (renewed := json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a"))))["expires_at"] == first:
            assert time.monotonic() < deadline, "the heartbeat was not renewed"
            time.sleep(0.02)
        assert renewed["expires_at"] > first and renewed["finished"] is False
        claim_all(leases, SOURCES)
    assert json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a")))["finished"] is True


def test_an_exception_still_finishes_the_run(tmp_path):
    root = str(tmp_path / "out")
    with pytest.raises(RuntimeError):
        with Leases(restore_run(root, "run-a")):
            raise RuntimeError("restore failed")
    assert json.loads(storage.read_bytes(OutputLayout(root).run_file("run-a")))["finished"] is True


def test_a_zero_lease_time_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must be positive"):
        Leases(restore_run(tmp_path, "run-a"), timedelta(0))


# -- the fence ---------------------------------------------------------------------------------------


def failed_window(root: str, source: SourceFile, permanent: bool = False) -> dict:
    row = {"source": source.url, "rel": source.rel, "fingerprint": source.fingerprint, "video_id": "v" + source.rel[-5],
           "output_stem": join(root, source.rel[:-4]), "staging": ""}
    return failed_row(row, "not a video" if permanent else "out of memory", permanent=permanent)


def test_a_stalled_run_that_lost_its_lease_publishes_and_records_nothing(tmp_path):
    root, clock = str(tmp_path / "out"), Clock()
    stalled = started(root, "run-a", clock)
    assert claim_all(stalled, SOURCES[:1]).mine == SOURCES[:1]
    (tmp_path / "out" / "_staging" / "va").mkdir(parents=True)
    (tmp_path / "out" / "_staging" / "va" / "window_00000.mkv").write_bytes(b"segment of run b")
    clock.now += TTL * 2  # run a stalls past its lease time; run b takes the video over
    assert claim_all(started(root, "run-b", clock), SOURCES[:1]).mine == SOURCES[:1]

    # a permanent failure would clear the video's staging: not from the run that lost the lease
    row = finish_video([failed_window(root, SOURCES[0], permanent=True)], run=restore_run(root, "run-a"))
    assert row["status"] == "failed" and "lost the lease" in row["error"] and "run-b" in row["error"]
    assert not (tmp_path / "out" / "_ledger" / "videos").exists()  # no ledger row from run a
    assert (tmp_path / "out" / "_staging" / "va" / "window_00000.mkv").exists()
    with pytest.raises(LeaseLost):
        check_held(stalled.run, SOURCES[0].rel)
    with pytest.raises(LeaseLost), atomic_output(str(tmp_path / "out" / "a.mp4"),
                                                 lambda: check_held(stalled.run, SOURCES[0].rel)) as tmp:
        Path(tmp).write_bytes(b"restored by the stalled run")
    assert not (tmp_path / "out" / "a.mp4").exists()  # the publish is fenced too

    # the run that holds the lease records it; staging is only ever cleared by the holder
    row = finish_video([failed_window(root, SOURCES[0])], run=restore_run(root, "run-b"))
    assert "lost the lease" not in row["error"]
    assert len(list((tmp_path / "out" / "_ledger" / "videos").glob("*.parquet"))) == 1


def test_removing_empty_staging_folders_keeps_a_live_runs_segments(tmp_path):
    staging = tmp_path / "_staging"
    (staging / "v1" / "old").mkdir(parents=True)
    (staging / "v2" / "new").mkdir(parents=True)
    (staging / "v2" / "new" / "window_00000.mkv").write_bytes(b"another run's segment")
    remove_empty_folders(str(staging))
    assert not (staging / "v1").exists()
    assert (staging / "v2" / "new" / "window_00000.mkv").read_bytes() == b"another run's segment"


def test_a_video_finished_by_another_run_since_the_ledger_was_read_is_not_claimed_again(root):
    clock = Clock()
    first = started(root, "run-a", clock)
    read_at = T0 + timedelta(seconds=1)  # the second run reads the ledger; then the first finishes the video
    assert claim_video(first.run, "reel/a.mp4", clock=clock).mine
    record_finished(first.run, "reel/a.mp4", "10:1")
    first._beat(finished=True)

    claim = claim_video(restore_run(root, "run-b", read_at=read_at), "reel/a.mp4", "10:1", clock=clock)
    assert (claim.mine, claim.done, claim.holder) == (False, True, "run-a")
    # Finished before this run read the ledger (so its output was found gone), or for other settings: taken.
    assert claim_video(restore_run(root, "run-b"), "reel/a.mp4", "10:1", clock=clock).mine
    assert claim_video(restore_run(root, "run-c", read_at=read_at), "reel/b.mp4", "10:1", clock=clock).mine
