"""Tests of the input listing against what real folders hold (issue 25): names that are not UTF-8 or
that fsspec would read as URLs or globs, symbolic links in and out of the input, link loops, FIFOs,
sockets, devices, folders that cannot be listed, entries that vanish or change while a run lists or
reads them. The whole restore job over such a folder is tests/test_archive_listing.py."""

from __future__ import annotations

import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from helpers import restore_run
from pipelines import listing
from pipelines.listing import SKIPPED, escaped_name, list_sources
from pipelines.restore import pipeline
from pipelines.restore.plan_stage import claim_and_plan
from pipelines.storage import atomic_output, canonical, exists, filesystem, join, local_url, read_bytes, split_url

URL_LIKE = ["a::b.mp4", "hash#1.mp4", "what?.mp4", "star*.mp4", "take[1].mp4", "100%.mp4", "%41.mp4"]


def counts(**nonzero: int) -> dict[str, int]:
    """A listing's skipped counts: every kind, zero but those given."""
    return {**dict.fromkeys(SKIPPED, 0), **nonzero}


def special_folder(root: Path, outside: Path) -> dict[str, bytes]:
    """Every kind of entry under `root` (and `outside`, which links point into): {rel: content} of the
    files it must list."""
    listed = {name: name.encode() for name in URL_LIKE}
    listed["real/clip.mp4"] = b"real"
    for rel, data in listed.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    latin = os.fsencode(root) + b"/latin/caf\xe9.mp4"  # a Latin-1 name: not UTF-8
    os.makedirs(os.path.dirname(latin))
    with open(latin, "wb") as f:
        f.write(b"latin-1")
    listed["latin/caf%E9.mp4"] = b"latin-1"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"outside")
    links = {"escape.mp4": outside / "secret.mp4", "escape_dir": outside, "same.mp4": root / "real/clip.mp4",
             "again": root / "real", "dangling.mp4": root / "nowhere.mp4", "self": root / "self",
             "ping.mp4": root / "pong.mp4", "pong.mp4": root / "ping.mp4"}
    for name, target in links.items():
        (root / name).symlink_to(target)
    os.mkfifo(root / "pipe.mp4")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock.mp4"))
    return listed


def test_every_entry_is_listed_or_counted(tmp_path, caplog):
    root, outside = tmp_path / "in", tmp_path / "outside"
    listed = special_folder(root, outside)
    with caplog.at_level(logging.WARNING, logger="pipelines.listing"):
        videos, skipped = list_sources(root)
    assert {v.rel: read_bytes(v.url) for v in videos} == listed  # each name opens its own file
    assert skipped == counts(special_files=2, links_outside=2, broken_links=4, duplicate_links=2)
    logged = caplog.text
    assert "pipe.mp4: special files" in logged and "escape_dir: links outside" in logged
    assert "ping.mp4: broken links" in logged and "same.mp4" not in logged  # duplicates are harmless
    (latin,) = [v for v in videos if v.rel.startswith("latin/")]
    assert latin.url == f"file://{root}/latin/caf%E9.mp4"  # Arrow, JSON and logs can carry it


def test_device_files_are_counted_never_opened(tmp_path):
    try:
        os.mknod(tmp_path / "null.mp4", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("making a device file needs root (CAP_MKNOD)")
    assert list_sources(tmp_path) == ([], counts(special_files=1))


def test_a_folder_that_cannot_be_listed_is_counted_and_named(tmp_path, monkeypatch, caplog):
    # chmod 000 stops no reads where the tests run as root: the refusal is made where the listing asks.
    for rel in ("locked/a.mp4", "open/b.mp4"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    scandir = os.scandir

    def refusing(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(listing.os, "scandir", refusing)
    with caplog.at_level(logging.WARNING, logger="pipelines.listing"):
        videos, skipped = list_sources(tmp_path)
    assert [v.rel for v in videos] == ["open/b.mp4"] and skipped == counts(unreadable=1)
    assert f"{tmp_path}/locked: unreadable (Permission denied)" in caplog.text


def test_entries_that_vanish_while_listed_are_not_there(tmp_path, monkeypatch):
    for rel in ("gone.mp4", "kept.mp4", "folder/inner.mp4"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    scandir = os.scandir

    def then_removed(path):
        entries = list(scandir(path))
        if path == str(tmp_path):  # listed, then a file and a folder go before the walk reaches them
            (tmp_path / "gone.mp4").unlink()
            (tmp_path / "folder/inner.mp4").unlink()
            (tmp_path / "folder").rmdir()
        return iter(entries)

    monkeypatch.setattr(listing.os, "scandir", then_removed)
    videos, skipped = list_sources(tmp_path)
    assert [v.rel for v in videos] == ["kept.mp4"] and skipped == counts()


def test_escaped_names():
    assert escaped_name(os.fsdecode(b"caf\xe9/\x82\xa0.mp4")) == "caf%E9/%82%A0.mp4"
    assert escaped_name("Ünïcødé 100%.mp4") == "Ünïcødé 100%.mp4"  # valid UTF-8 is kept as it is


def test_local_urls_round_trip_the_bytes_of_a_name(tmp_path):
    path = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9 #1?.mp4")
    url = local_url(path)
    assert url == f"file://{tmp_path}/caf%E9%20%231%3F.mp4"
    assert split_url(url) == ("file", path) and canonical(url) == path
    assert local_url(f"{tmp_path}/a::b%41.mp4") == f"{tmp_path}/a::b%41.mp4"  # a plain path stays one
    assert split_url(f"{tmp_path}/%41.mp4")[1] == f"{tmp_path}/%41.mp4"  # and is never decoded


@pytest.mark.parametrize("name", URL_LIKE)
def test_local_paths_are_literal(tmp_path, name):
    url = join(str(tmp_path), "sub", name)
    with atomic_output(url) as tmp:
        Path(tmp).write_bytes(b"written")
    assert sorted(os.listdir(tmp_path / "sub")) == [name]  # there, and nowhere else ("a::b" is not "a")
    assert read_bytes(url) == b"written" and exists(url) and filesystem(url)[1] == url


@pytest.mark.parametrize("server", ["s3_server", "gcs_server"])
def test_bucket_keys_that_look_like_urls_or_globs(server, request):
    root = request.getfixturevalue(server).fresh()
    for name in URL_LIKE:
        fs, path = filesystem(join(root, "in", name))
        fs.pipe_file(path, name.encode())
    videos, skipped = list_sources(join(root, "in"))
    assert {v.rel: read_bytes(v.url) for v in videos} == {name: name.encode() for name in URL_LIKE}
    assert skipped == counts()
    with atomic_output(join(root, "out", "a::b*.mp4")) as tmp:
        Path(tmp).write_bytes(b"out")
    fs, path = filesystem(join(root, "out"))
    assert [key.rsplit("/", 1)[1] for key in fs.find(path)] == ["a::b*.mp4"]


def source_row(path: Path, fingerprint: str) -> dict:
    return {"source": str(path), "rel": path.name, "fingerprint": fingerprint, "checksum": "",
            "previous_error": "", "repeats": 0}


def plan(row: dict, output: Path) -> dict:
    (out,) = claim_and_plan(row, run=restore_run(output), window=8, overlap=2, detector="content")
    return out


def test_a_source_that_changed_or_vanished_since_the_listing_fails_with_a_reason(tmp_path):
    growing = tmp_path / "copying.mp4"
    growing.write_bytes(b"first part")
    (listed,) = list_sources(tmp_path)[0]
    growing.write_bytes(b"first part, and more")  # still being copied in
    row = plan(source_row(growing, listed.fingerprint), tmp_path / "out")
    assert (row["status"], row["permanent"]) == ("failed", False)
    assert row["error"] == ("the file changed since the run listed it (10 bytes then, 20 now); the next run "
                            "restores it")
    growing.unlink()
    row = plan(source_row(growing, listed.fingerprint), tmp_path / "out")
    assert (row["status"], row["permanent"]) == ("failed", False) and row["error"].startswith("FileNotFoundError")


def test_an_unreadable_source_fails_with_a_reason(tmp_path):
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(b"x" * 10)
    clip.chmod(0)
    if os.access(clip, os.R_OK):
        pytest.skip("running as root: a file's mode stops none of its reads")
    row = plan(source_row(clip, "10:1"), tmp_path / "out")
    assert (row["status"], row["permanent"]) == ("failed", False) and row["error"].startswith("PermissionError")


def test_copy_digests_pass_a_source_that_vanished(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"a")
    (tmp_path / "b.mp4").write_bytes(b"b")
    sources, _ = list_sources(tmp_path)
    (tmp_path / "b.mp4").unlink()
    digests = pipeline._digests(sources)
    assert digests["a.mp4"].startswith("sha256:") and digests["b.mp4"] == ""  # unknown: restored, and fails


def test_a_trusted_folder_is_listed_through_its_links(tmp_path):
    # A weights folder may be a Hugging Face cache's snapshot: its files are links to the cache's blobs.
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs/b1").write_bytes(b"weights")
    weights = tmp_path / "weights"
    (weights / "text").mkdir(parents=True)
    (weights / "text/model.safetensors").symlink_to(tmp_path / "blobs/b1")
    (weights / "text/up").symlink_to(weights)  # a folder above: walked once
    (weights / "gone").symlink_to(tmp_path / "nowhere")
    files = listing.list_files(weights)
    assert {rel: info["size"] for rel, info in files.items()} == {"text/model.safetensors": 7}
