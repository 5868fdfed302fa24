"""The restore job (jobs/upscale_archive.py on a local Ray, bicubic x2) over an input folder holding
everything a folder can hold that once stopped a run or made it read elsewhere (issue 25): names that
are not UTF-8 or that fsspec reads as chained URLs and globs, symbolic links in and out of the input,
link loops, FIFOs, sockets, device files, unreadable files and folders, a control character and an
escaped name that is another file's. Every entry is restored, counted as skipped or a failed row; the
run exits 0 and nothing outside the input is read or written."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from formats import moving_bar, write
from helpers import decode_all, latest_rows, read_summary, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = os.geteuid() == 0  # root reads a file whatever its mode: no unreadable entries can be made
NAMES = ["names/a::b.mp4", "names/hash#1.mp4", "names/what?.mp4", "names/star*.mp4", "names/take[1].mp4",
         "names/100%.mp4"]
DONE = ["plain.mp4", "latin/caf%E9.mp4", *NAMES] + (["locked/inner.mp4", "unreadable.mp4"] if ROOT else [])
FAILED = {  # rel -> start of the reason in the ledger
    "bad/line\nbreak.mp4": "unsafe object key",
    "clash/x%E9.mp4": "output name clashes with ",  # a literal "%E9" and an escaped Latin-1 byte: two sources
    **({} if ROOT else {"unreadable.mp4": "PermissionError"}),
}
SKIPPED = {"hidden": 1, "not_video": 1, "special_files": 2 + ROOT, "links_outside": 3, "broken_links": 4,
           "duplicate_links": 2, "unreadable": 0 if ROOT else 1}


def build(root: Path, outside: Path) -> None:
    """The input folder, and beside it a folder that links point into and no run may touch."""
    root.mkdir()
    clip = write(root / "plain.mp4", np.stack([moving_bar(i) for i in range(4)]), codec="libx264").read_bytes()
    for rel in [*NAMES, "bad/line\nbreak.mp4", "clash/x%E9.mp4", "locked/inner.mp4", "unreadable.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(clip)
    (root / "latin").mkdir()
    for name in (b"latin/caf\xe9.mp4", b"clash/x\xe9.mp4"):  # Latin-1 names, not UTF-8
        with open(os.fsencode(root) + b"/" + name, "wb") as f:
            f.write(clip)
    (root / ".hidden.mp4").write_bytes(clip)
    (root / "notes.txt").write_text("shot list")
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(clip)
    os.mkfifo(outside / "pipe.mp4")  # were it opened through its link, the run would wait forever
    links = {"escape.mp4": outside / "secret.mp4", "escape_dir": outside, "pipe.mp4": outside / "pipe.mp4",
             "same.mp4": root / "plain.mp4", "again": root / "names", "dangling.mp4": root / "nowhere.mp4",
             "self": root / "links/self", "ping.mp4": root / "links/pong.mp4", "pong.mp4": root / "links/ping.mp4"}
    (root / "links").mkdir()
    for name, target in links.items():
        (root / "links" / name).symlink_to(target)
    (root / "special").mkdir()
    os.mkfifo(root / "special/fifo.mp4")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "special/sock.mp4"))
    if ROOT:
        os.mknod(root / "special/null.mp4", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    else:
        (root / "locked").chmod(0)
        (root / "unreadable.mp4").chmod(0)
    # Reading a file moves its access time where it is older than its modification time (relatime).
    os.utime(outside / "secret.mp4", ns=(1_000_000_000, (outside / "secret.mp4").stat().st_mtime_ns))


def snapshot(folder: Path) -> dict[str, tuple[int, int, int]]:
    """{name: (size, mtime, atime)} of every entry under `folder`, links not followed."""
    return {str(p.relative_to(folder)): (s.st_size, s.st_mtime_ns, s.st_atime_ns)
            for p in folder.rglob("*") for s in [p.lstat()]}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess, dict, dict]:
    base = tmp_path_factory.mktemp("listing")
    archive, outside, output = base / "in", base / "outside", base / "restored"
    build(archive, outside)
    before = snapshot(outside)
    result = run_job(archive, output, "--preset", "bicubic", "--scale", "2")
    return archive, output, result, before, snapshot(outside)


def test_every_entry_is_restored_counted_or_failed_and_the_run_exits_0(run):
    archive, output, result, _, _ = run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = latest_rows(output)
    assert set(rows) == set(DONE) | set(FAILED)
    for rel in DONE:
        assert (rows[rel]["status"], rows[rel]["output"]) == ("done", str(output / rel)), rows[rel]
        assert len(decode_all(output / rel)) == 4
    for rel, reason in FAILED.items():
        assert rows[rel]["status"] == "failed" and rows[rel]["error"].startswith(reason), rows[rel]
    assert rows["latin/caf%E9.mp4"]["source"] == f"file://{archive}/latin/caf%E9.mp4"
    summary = read_summary(output)
    assert {kind: summary[f"skipped_{kind}"] for kind in SKIPPED} == SKIPPED
    clashing = len(DONE) + len(FAILED) + 1  # the clash is one rel for two sources
    assert (summary["done"], summary["failed"], summary["listed"]) == (len(DONE), len(FAILED) + 1, clashing)
    assert "listing skips" in result.stdout and "links outside" in result.stdout


def test_outputs_land_at_their_literal_names_and_nothing_outside_is_touched(run):
    archive, output, _, before, after = run
    videos = sorted(str(p.relative_to(output)) for p in output.rglob("*.mp4") if "_ledger" not in p.parts)
    assert videos == sorted(DONE)  # "a::b.mp4" is not written as "a", "star*" globs nothing
    assert after == before  # neither read (the access time would have moved) nor written
    assert sorted(os.listdir(archive.parent)) == ["in", "outside", "restored"]
    assert not (output / "links").exists()
