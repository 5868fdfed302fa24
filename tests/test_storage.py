"""Tests of pipelines.storage, pipelines.listing and pipelines.reachable on local disk and on real S3 (moto)
and GCS (emulator) servers."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from helpers import media
from pipelines.listing import SKIPPED, VIDEO_EXTENSIONS, SourceFile, list_sources, list_videos
from pipelines.media.probe import probe
from pipelines.reachable import check_reachable
from pipelines.storage import (atomic_output, create_exclusive, exists, filesystem, join, open_input, read_bytes,
                               relative, remove, write_bytes_atomic)

STORES = ["local", "s3", "gs"]


@pytest.fixture(params=STORES)
def root(request, tmp_path) -> str:
    """A fresh, empty folder on each kind of store."""
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")
    return server.fresh()


def put(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    if os.path.isabs(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    fs.pipe_file(path, data)


# -- URLs -----------------------------------------------------------------------------------------


def test_join_keeps_the_scheme():
    assert join("s3://bucket", "a", "b.mp4") == "s3://bucket/a/b.mp4"
    assert join("gs://bucket/out/", "x/y.mkv") == "gs://bucket/out/x/y.mkv"
    assert join("/data/in", "a/b.mp4") == "/data/in/a/b.mp4"
    assert join("file:///data", "a") == "file:///data/a"
    assert join("s3://bucket/out", "/abs.mp4") == "s3://bucket/out/abs.mp4"  # never restarts at the root
    assert join("s3://bucket/out") == "s3://bucket/out"


def test_relative():
    assert relative("s3://bucket/in/a/b.mp4", "s3://bucket/in") == "a/b.mp4"
    assert relative("gs://bucket/in/a.mp4", "gs://bucket/in/") == "a.mp4"
    assert relative("gcs://bucket/in/a.mp4", "gs://bucket") == "in/a.mp4"
    assert relative("/data/in/x/y.mov", "/data/in") == "x/y.mov"
    assert relative("file:///data/in/x.mov", "/data/in") == "x.mov"
    with pytest.raises(ValueError, match="not under"):
        relative("s3://bucket/input2/a.mp4", "s3://bucket/input")
    with pytest.raises(ValueError, match="not under"):
        relative("gs://bucket/in/a.mp4", "s3://bucket/in")


def test_local_filesystem_paths(tmp_path):
    fs, path = filesystem(f"file://{tmp_path}/a.mp4")
    assert path == f"{tmp_path}/a.mp4"
    assert filesystem(tmp_path / "a.mp4")[1] == path


# -- listing --------------------------------------------------------------------------------------

TREE = {
    "a/one.MP4": b"1",
    "b/c/two.mkv": b"22",
    "b/c/notes.txt": b"not a video",
    "b/c/clip.mp4.json": b"{}",
    "UPPER.WebM": b"333",
    "empty.mp4": b"",
    "deep/er/still/three.ts": b"4444",
    ".hidden.mp4": b"h",
    "x/.cache/hidden-folder.mp4": b"h",
    "_ledger/videos.mp4": b"l",  # the user's folder, named like the job's own: listed
    "restored/_staging/0123456789abcdef/fedcba9876543210/window_00000.mkv": b"s",  # the job's own: not
    "restored/.out.mp4.1234.part": b"p",
}
LISTED = ["UPPER.WebM", "_ledger/videos.mp4", "a/one.MP4", "b/c/two.mkv", "deep/er/still/three.ts", "empty.mp4"]


def test_list_videos(root):
    for rel, data in TREE.items():
        put(join(root, rel), data)
    videos, skipped = list_sources(root)
    assert [v.rel for v in videos] == LISTED
    assert [v.size for v in videos] == [3, 1, 1, 2, 4, 0]  # the empty file is listed, to fail visibly later
    assert skipped == {**dict.fromkeys(SKIPPED, 0), "hidden": 3, "not_video": 2}  # counted for the summary
    for v in videos:
        assert read_bytes(v.url) == TREE[v.rel]
        assert relative(v.url, root) == v.rel
        assert v.version
    assert list_videos(root + "/") == videos


def test_list_videos_of_a_missing_folder_is_empty(root):
    assert list_videos(join(root, "nothing-here")) == []


def test_list_videos_gives_absolute_local_urls(tmp_path, monkeypatch):
    put(str(tmp_path / "in" / "a.mp4"), b"x")
    monkeypatch.chdir(tmp_path)
    (video,) = list_videos("in")
    assert video.url == str(tmp_path / "in" / "a.mp4")  # Ray workers may run in another directory
    (video,) = list_videos(f"file://{tmp_path}/in")
    assert video.url == str(tmp_path / "in" / "a.mp4")


def test_video_extensions():
    assert all(ext == ext.lower() and ext.startswith(".") for ext in VIDEO_EXTENSIONS)
    assert {".mp4", ".mov", ".mkv", ".ts", ".webm"} <= VIDEO_EXTENSIONS


# -- fingerprints ---------------------------------------------------------------------------------


def fingerprint(url: str) -> str:
    (video,) = [v for v in list_videos(url.rsplit("/", 1)[0]) if v.url == url]
    return video.fingerprint


def test_fingerprint_changes_with_the_content(root):
    url = join(root, "v.mp4")
    put(url, b"first")
    first = fingerprint(url)
    assert fingerprint(url) == first  # stable while nothing changes
    put(url, b"other")  # same size, new content: a new etag (buckets) or mtime (local disk)
    if "://" not in url:
        os.utime(url, ns=(1, 1_000_000_000_123))
    assert fingerprint(url) not in {first}
    second = fingerprint(url)
    put(url, b"a longer one")
    assert fingerprint(url) not in {first, second}


def test_local_fingerprint_sees_nanoseconds(tmp_path):
    url = str(tmp_path / "v.mp4")
    put(url, b"x")
    os.utime(url, ns=(0, 1_700_000_000_000_000_001))
    first = fingerprint(url)
    os.utime(url, ns=(0, 1_700_000_000_000_000_002))
    assert fingerprint(url) != first
    assert SourceFile(url, "v.mp4", 1, "1700000000000000002").fingerprint == fingerprint(url)


# -- atomic writes --------------------------------------------------------------------------------


def test_atomic_output_appears_only_when_complete(root):
    url = join(root, "out", "video.mp4")
    with atomic_output(url) as tmp:
        Path(tmp).write_bytes(b"part one")
        assert not exists(url)
        with open(tmp, "ab") as f:
            f.write(b", part two")
        assert not exists(url)
    assert read_bytes(url) == b"part one, part two"
    assert list_videos(root)[0].rel == "out/video.mp4"
    fs, path = filesystem(join(root, "out"))
    assert [os.path.basename(p) for p in fs.find(path)] == ["video.mp4"]  # no temporary left


def test_atomic_output_leaves_nothing_after_an_error(root):
    url = join(root, "out", "video.mp4")
    with pytest.raises(RuntimeError, match="encoder died"):
        with atomic_output(url) as tmp:
            Path(tmp).write_bytes(b"half a video")
            raise RuntimeError("encoder died")
    assert not exists(url)
    fs, path = filesystem(root)
    assert [p for p in fs.find(path)] == []


def test_atomic_output_replaces_an_old_file_whole(root):
    url = join(root, "video.mp4")
    write_bytes_atomic(url, b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(url) as tmp:
            Path(tmp).write_bytes(b"new but broken")
            raise RuntimeError("killed")
    assert read_bytes(url) == b"old"
    with atomic_output(url) as tmp:
        Path(tmp).write_bytes(b"new")
    assert read_bytes(url) == b"new"


def test_bytes_round_trip_and_remove(root):
    url = join(root, "_ledger", "summary.json")
    write_bytes_atomic(url, b'{"done": 3}')
    assert exists(url)
    assert read_bytes(url) == b'{"done": 3}'
    write_bytes_atomic(url, b"{}")
    assert read_bytes(url) == b"{}"
    remove(url)
    assert not exists(url)
    remove(url)  # nothing there is fine: cleanup may run twice
    write_bytes_atomic(join(root, "_staging", "v", "0.mkv"), b"0")
    write_bytes_atomic(join(root, "_staging", "v", "deeper", "1.mkv"), b"1")
    remove(join(root, "_staging"), recursive=True)
    assert not exists(join(root, "_staging", "v", "0.mkv"))
    assert not exists(join(root, "_staging", "v", "deeper", "1.mkv"))


def test_open_input_seeks(root):
    url = join(root, "v.mp4")
    put(url, bytes(range(200)))
    with open_input(url) as f:
        f.seek(150)
        assert f.read(3) == bytes([150, 151, 152])
        f.seek(0)
        assert f.read(2) == bytes([0, 1])


def test_probe_reads_from_the_store(root):
    """The source path of the scenes and restore stages: PyAV reads straight from the bucket."""
    clip = media("lq/dove_007.mp4")
    url = join(root, "in", "dove.mp4")
    put(url, clip.read_bytes())
    assert probe(url) == probe(clip)


# -- reachability ---------------------------------------------------------------------------------


def test_check_reachable_local(tmp_path):
    with pytest.raises(ValueError, match="input folder .* does not exist"):
        check_reachable(str(tmp_path / "missing"))
    (tmp_path / "file.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_reachable(str(tmp_path / "file.mp4"))
    check_reachable(str(tmp_path))
    check_reachable(str(tmp_path / "new" / "out"), writable=True)  # an output folder is created
    assert os.listdir(tmp_path / "new" / "out") == []  # and the probe is gone


def test_check_reachable_local_output_under_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot write to"):
        check_reachable(str(tmp_path / "file" / "out"), writable=True)


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_check_reachable_buckets(store, request):
    server = request.getfixturevalue("s3_server" if store == "s3" else "gcs_server")
    folder = server.fresh()
    check_reachable(server.url)
    check_reachable(folder, writable=True)
    fs, path = filesystem(folder)
    assert fs.find(path) == []  # the write probe was deleted
    with pytest.raises(ValueError, match="input folder .* does not exist"):
        check_reachable(folder)
    write_bytes_atomic(join(folder, "a.mp4"), b"x")
    check_reachable(folder)
    with pytest.raises(ValueError, match=f"bucket {store}://no-such-bucket does not exist"):
        check_reachable(f"{store}://no-such-bucket/in")
    with pytest.raises(ValueError, match=f"bucket {store}://no-such-bucket does not exist"):
        check_reachable(f"{store}://no-such-bucket/out", writable=True)


@pytest.mark.parametrize("store,variable", [("s3", "AWS_ENDPOINT_URL"), ("gs", "STORAGE_EMULATOR_HOST")])
def test_check_reachable_dead_endpoint_fails_fast(store, variable, monkeypatch):
    monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"cannot connect .*127.0.0.1:9.*{variable}"):
        check_reachable(f"{store}://bucket/in")
    assert time.monotonic() - start < 10


def test_check_reachable_missing_bucket_name():
    with pytest.raises(ValueError, match="names no bucket"):
        check_reachable("s3://")


@pytest.mark.parametrize("store,variable", [("s3", "AWS_ENDPOINT_URL"), ("gs", "STORAGE_EMULATOR_HOST")])
def test_check_reachable_silent_endpoint_times_out(store, variable, monkeypatch):
    """An endpoint that accepts connections and never answers (a hung proxy, a firewall that
    swallows packets after the handshake): bounded by the check's time budget, not by retries."""
    import pipelines.reachable

    monkeypatch.setattr(pipelines.reachable, "_CHECK_SECONDS", 1.0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshakes; nobody reads or answers
        monkeypatch.setenv(variable, f"http://127.0.0.1:{listener.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(ValueError, match=f"no answer from {store}://bucket .* within 1 s"):
            check_reachable(f"{store}://bucket/in")
        assert time.monotonic() - start < 5


def test_atomic_output_of_a_name_as_long_as_the_filesystem_allows(tmp_path):
    """255 bytes of name (Unicode, spaces, brackets): the temporary name would not fit; the file
    still appears under its own name."""
    name = "Ünïcødé [1987] (VHS) " * 20
    name = name.encode()[:251].decode(errors="ignore") + ".mkv"
    assert 250 <= len(name.encode()) <= 255
    with atomic_output(tmp_path / name) as tmp:
        Path(tmp).write_bytes(b"x")
        assert len(os.path.basename(tmp).encode()) <= 255
    assert os.listdir(tmp_path) == [name]


def test_local_writes_reach_the_disk_before_their_name_does(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_bytes_atomic(str(tmp_path / "summary.json"), b"{}")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".part") and events[2][1] == str(tmp_path)  # the data, then the folder
    events.clear()
    assert create_exclusive(str(tmp_path / "lease.json"), b"{}")
    assert [kind for kind, _ in events] == ["fsync", "fsync"] and events[1][1] == str(tmp_path)
