"""The one place that knows about URLs and object stores: local paths, `s3://` (s3fs) and `gs://`
(gcsfs) behind fsspec, reads and all-or-nothing writes (listing source videos is listing.py, the
fail-fast checks of a URL are reachable.py)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

# gcsfs reads this once, at import: when on, it probes every bucket's type over gRPC, which an
# emulator never answers (60 s per bucket). Set before anything imports gcsfs; a value the user
# set explicitly wins.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from star_model.checkpoint import sha256_of_stream  # noqa: E402

_NAME_MAX = 255  # bytes in one file name on ext4, XFS, APFS and most others

Source = str | os.PathLike | BinaryIO
"""A URL or path that `open_input` opens (local, s3://, gs://), or an already open binary file object."""

_LOCAL = frozenset({"file", "local"})


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path within it ("bucket/key" for buckets).

    Instances come from fsspec's cache, keyed by the options below and the process id, so each
    Ray worker builds its own after a fork. Listing caches are off: other processes (the restore
    actors) write to the same folders, and a stale listing would hide their files.
    """
    protocol, path = split_url(url)
    if protocol == "s3":
        return fsspec.filesystem("s3", use_listings_cache=False, **s3_options()), path
    if protocol == "gs":
        return fsspec.filesystem("gs", use_listings_cache=False, **gcs_options()), path
    if protocol == "file":
        # The path as it is: `url_to_fs` would take "a::b.mp4" for a chained URL and open "a".
        return fsspec.filesystem("file"), path
    return fsspec.core.url_to_fs(os.fspath(url))


def join(url: str | os.PathLike, *parts: str) -> str:
    """`url` with `parts` appended by posix rules, scheme kept. Parts are relative: a leading "/"
    is dropped instead of restarting at the root as `os.path.join` would."""
    scheme, sep, rest = os.fspath(url).partition("://")
    if not sep:  # a plain local path
        scheme, rest = "", scheme
    joined = posixpath.join(rest, *(p.lstrip("/") for p in parts if p))
    return f"{scheme}{sep}{joined}"


def relative(url: str | os.PathLike, root: str | os.PathLike) -> str:
    """The posix path of `url` below `root` ("a/b.mp4"); both must be on the same store."""
    url_protocol, url_path = split_url(url)
    root_protocol, root_path = split_url(root)
    if url_protocol != root_protocol or not (url_path + "/").startswith(root_path.rstrip("/") + "/"):
        raise ValueError(f"{os.fspath(url)!r} is not under {os.fspath(root)!r}")
    return posixpath.relpath(url_path, root_path)


@contextlib.contextmanager
def atomic_output(url: str | os.PathLike, fence: Callable[[], None] | None = None) -> Iterator[str]:
    """Yield a local path to write; on success it appears at `url` whole, on error nothing does.
    `fence`, if given, is called once the file is complete and just before it is published: an
    exception from it (a lease lost meanwhile) publishes nothing.

    Local disk: a hidden temporary file in the destination folder, flushed to the disk (fsync), then
    `os.replace` (atomic on one filesystem), then the folder flushed so the new name is durable too.
    Buckets have no rename (a "move" is copy + delete), but an object becomes visible only when its
    upload completes, so the finished local file is uploaded in one put.
    The temporary name ends in `.part`, so a listing of the output folder never takes it for a video.
    """
    fs, path = filesystem(url)
    name = posixpath.basename(path.rstrip("/"))
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = _temporary(path)
        try:
            yield tmp
            _sync(tmp)  # the data reaches the disk before the name does: a crash never leaves a torn file
            if fence:
                fence()
            os.replace(tmp, path)
            _sync(folder)  # and the rename itself survives a power cut
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="star-out-") as folder:
            tmp = os.path.join(folder, name)
            yield tmp
            if fence:
                fence()
            fs.put_file(tmp, path)


@contextlib.contextmanager
def open_input(src: Source) -> Iterator[BinaryIO]:
    """Yield a binary file object for `src`; a file object passed in stays open (it is the caller's)."""
    if hasattr(src, "read"):
        yield src  # type: ignore[misc]
        return
    fs, path = filesystem(src)  # type: ignore[arg-type]
    with fs.open(path, "rb") as f:
        yield f


def read_bytes(url: str | os.PathLike) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def write_bytes_atomic(url: str | os.PathLike, data: bytes) -> None:
    """Small files (summary.json, manifests): readers see the old content or the new, never half."""
    with atomic_output(url) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def create_exclusive(url: str | os.PathLike, data: bytes) -> bool:
    """Write `data` at `url` only if nothing is there yet: True if this call created it, False if
    something already was. Of several concurrent callers exactly one gets True (leases rely on it).

    Local disk: a complete hidden temporary file hard-linked to the name (`link` fails when the
    name exists, and readers never see a half-written file); `open(..., "xb")` where the filesystem
    has no hard links. S3: a put with `If-None-Match: *`; GCS: a put with `ifGenerationMatch=0`
    (s3fs and gcsfs send these for `mode="create"`). Other fsspec stores check, then write.
    """
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data)
    _sync(tmp)
    try:
        os.link(tmp, path)
        _sync(folder)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some FUSE mounts): exclusive create, then write
        try:
            with open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
    finally:
        os.remove(tmp)
    return True


def exists(url: str | os.PathLike) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def size(url: str | os.PathLike) -> int:
    """Bytes of the file at `url` (FileNotFoundError when there is none)."""
    fs, path = filesystem(url)
    return int(fs.info(path)["size"])


def remove_empty_folders(url: str | os.PathLike) -> None:
    """Remove the empty folders under a local `url` (itself included), deepest first. A folder that
    another process fills meanwhile is left (`rmdir` refuses a non-empty one), so this never deletes
    anyone's files. Buckets have no folders to remove."""
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return
    for folder, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count(os.sep)):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def remove(url: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or, with `recursive`, a folder and everything under it). Nothing there is not
    an error, so cleanup that runs twice (a retried task) is safe."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


# -- URLs and endpoints ---------------------------------------------------------------------------


def split_url(url: str | os.PathLike) -> tuple[str, str]:
    """(protocol, path): "file" with an absolute path on local disk; "gcs://" is "gs". A plain path is
    taken literally ("a::b", "100%", "[1]*"); a "file://" URL is percent-decoded, as RFC 8089 says
    (`local_url` writes one for names that are not UTF-8)."""
    url = os.fspath(url)
    protocol, path = fsspec.core.split_protocol(url)
    protocol = protocol or "file"
    if protocol in _LOCAL:
        if url.startswith("file://"):
            path = os.fsdecode(urllib.parse.unquote_to_bytes(path))
        return "file", os.path.abspath(path)
    if protocol == "gcs":
        protocol = "gs"
    return protocol, path.rstrip("/")


def canonical(url: str | os.PathLike) -> str:
    """An absolute URL: plain absolute path on local disk (Ray workers may run in another working
    directory), "scheme://path" elsewhere."""
    protocol, path = split_url(url)
    return path if protocol == "file" else f"{protocol}://{path}"


def local_url(path: str) -> str:
    """A URL of the local file `path` that Arrow, JSON and logs can carry: the path itself, or, where it
    holds bytes that are not UTF-8 (os.scandir gives each as a lone surrogate), a "file://" URL of its
    bytes percent-encoded (RFC 8089), which `split_url` decodes back to the very same bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "file://" + urllib.parse.quote(os.fsencode(path))
    return path


def s3_options() -> dict[str, Any]:
    # botocore also reads AWS_ENDPOINT_URL itself; passing it makes it part of fsspec's cache key,
    # so a changed endpoint (tests) never reuses an instance built for the old one.
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def emulator_host() -> str | None:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host or host == "default":
        return None
    return host if "://" in host else f"http://{host}"


def gcs_options() -> dict[str, Any]:
    # The emulator checks no credentials; without "anon" gcsfs would look for Google ones.
    host = emulator_host()
    return {"endpoint_url": host, "token": "anon"} if host else {}


def _sync(path: str) -> None:
    """fsync a local file or folder (a folder's entry list is what a rename changes)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def content_digest(f: BinaryIO) -> str:
    """"sha256:<hex>" of an open file's whole content (read from the start; the position is restored)."""
    position = f.tell()
    f.seek(0)
    digest = sha256_of_stream(f)
    f.seek(position)
    return f"sha256:{digest}"


def _temporary(path: str) -> str:
    """A hidden temporary name beside the local file `path` (listings skip it; ".part" says what it is).
    A name too long to take the 19 extra bytes is replaced by its hash (still unique per name)."""
    folder, name = os.path.split(path)
    suffix = f".{uuid.uuid4().hex[:12]}.part"
    if len(f".{name}{suffix}".encode()) > _NAME_MAX:
        name = hashlib.sha1(name.encode()).hexdigest()
    return os.path.join(folder, f".{name}{suffix}")
