"""The one place that knows about URLs and object stores: local paths, `s3://` (s3fs) and `gs://`
(gcsfs) behind fsspec, listing of source videos, reachability checks and all-or-nothing writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

# gcsfs reads this once, at import: when on, it probes every bucket's type over gRPC, which an
# emulator never answers (60 s per bucket). Set before anything imports gcsfs; a value the user
# set explicitly wins.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from fsspec.asyn import sync  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
})
# Folders the pipeline writes; skipped when listing, so an output folder inside the input is not
# taken for new sources on the next run.
PIPELINE_FOLDERS = frozenset({"_ledger", "_staging"})

Source = str | os.PathLike | BinaryIO
"""A URL or path that `open_input` opens (local, s3://, gs://), or an already open binary file object."""

_LOCAL = frozenset({"file", "local"})
_CHECK_SECONDS = 10.0  # whole budget of one object-store call in `check_reachable`
_CONNECT_SECONDS = 3.0


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for `url` and the path within it ("bucket/key" for buckets).

    Instances come from fsspec's cache, keyed by the options below and the process id, so each
    Ray worker builds its own after a fork. Listing caches are off: other processes (the restore
    actors) write to the same folders, and a stale listing would hide their files.
    """
    protocol, path = _split(url)
    if protocol == "s3":
        return fsspec.filesystem("s3", use_listings_cache=False, **_s3_options()), path
    if protocol == "gs":
        return fsspec.filesystem("gs", use_listings_cache=False, **_gcs_options()), path
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
    url_protocol, url_path = _split(url)
    root_protocol, root_path = _split(root)
    if url_protocol != root_protocol or not (url_path + "/").startswith(root_path.rstrip("/") + "/"):
        raise ValueError(f"{os.fspath(url)!r} is not under {os.fspath(root)!r}")
    return posixpath.relpath(url_path, root_path)


@dataclass(frozen=True)
class SourceFile:
    """One source video as listed: enough to find it, and to tell whether it changed since."""

    url: str  # absolute: a local path, or "s3://bucket/key" / "gs://bucket/key"
    rel: str  # posix path relative to the input root; the output keeps this layout
    size: int  # bytes
    version: str  # etag on buckets, modification time in ns on local disk

    @property
    def fingerprint(self) -> str:
        """Changes whenever the content does (size and etag/mtime): the ledger's resume key."""
        return f"{self.size}:{self.version}"


def list_files(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{posix path below `root`: fsspec info} of every file under `root`, recursively, hidden names
    (a file or folder starting with ".", which also hides our own temporaries) left out. A missing
    root lists nothing."""
    fs, path = filesystem(root)
    prefix = path.rstrip("/") + "/"
    out = {}
    for name, info in fs.find(path, detail=True).items():
        if info.get("type") != "file" or not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        if not any(part.startswith(".") for part in rel.split("/")):
            out[rel] = info
    return out


def list_videos(root: str | os.PathLike) -> list[SourceFile]:
    """Every video under `root`, recursively, sorted by `rel`.

    A video is a file whose extension (any case) is in `VIDEO_EXTENSIONS`. Skipped: hidden names
    (see `list_files`) and anything under a `_ledger` or `_staging` folder. Empty files are listed:
    they must end as failed ledger rows, not vanish. A missing root lists nothing; `check_reachable`
    is the check that says so.
    """
    fs, _ = filesystem(root)
    base = canonical(root)
    out = []
    for rel, info in list_files(root).items():
        *folders, filename = rel.split("/")
        if PIPELINE_FOLDERS.intersection(folders):
            continue
        if posixpath.splitext(filename)[1].lower() not in VIDEO_EXTENSIONS:
            continue
        out.append(SourceFile(url=join(base, rel), rel=rel, size=int(info["size"]),
                              version=_version(fs, info["name"], info)))
    return sorted(out, key=lambda s: s.rel)


def check_reachable(url: str | os.PathLike, *, writable: bool = False) -> None:
    """Raise `ValueError` saying what to do unless `url` can be listed (and, with `writable`,
    written: a small hidden probe object is put under it and deleted).

    Runs on the driver before any GPU is requested, so it fails fast: one connection attempt with
    a short timeout to a configured endpoint, and at most `_CHECK_SECONDS` for each store call.
    A local output folder that does not exist yet is created; an input folder must exist.
    """
    protocol, path = _split(url)
    url = os.fspath(url)
    if protocol in _LOCAL:
        _check_local(url, path, writable)
        return
    if protocol == "s3":
        _check_bucket("s3", url, path, writable, endpoint=os.environ.get("AWS_ENDPOINT_URL"),
                      endpoint_var="AWS_ENDPOINT_URL")
    elif protocol == "gs":
        _check_bucket("gs", url, path, writable, endpoint=_emulator_host(),
                      endpoint_var="STORAGE_EMULATOR_HOST")
    else:  # memory:// and other fsspec stores (tests): plain checks, no network to time out
        fs, path = filesystem(url)
        if not writable and not fs.exists(path):
            raise ValueError(f"input folder {url} does not exist; check the URL")
        if writable:
            fs.makedirs(path, exist_ok=True)
            probe = posixpath.join(path, _probe_name())
            fs.pipe_file(probe, b"probe")
            fs.rm(probe)


@contextlib.contextmanager
def atomic_output(url: str | os.PathLike) -> Iterator[str]:
    """Yield a local path to write; on success it appears at `url` whole, on error nothing does.

    Local disk: a hidden temporary file in the destination folder, then `os.replace` (atomic on one
    filesystem). Buckets have no rename (a "move" is copy + delete), but an object becomes visible
    only when its upload completes, so the finished local file is uploaded in one put.
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
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        with tempfile.TemporaryDirectory(prefix="star-out-") as folder:
            tmp = os.path.join(folder, name)
            yield tmp
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
    try:
        os.link(tmp, path)
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


def remove(url: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or, with `recursive`, a folder and everything under it). Nothing there is not
    an error, so cleanup that runs twice (a retried task) is safe."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)


# -- helpers --------------------------------------------------------------------------------------


def _split(url: str | os.PathLike) -> tuple[str, str]:
    """(protocol, path): "file" with an absolute path on local disk; "gcs://" is "gs"."""
    protocol, path = fsspec.core.split_protocol(os.fspath(url))
    protocol = protocol or "file"
    if protocol in _LOCAL:
        return "file", os.path.abspath(path)
    if protocol == "gcs":
        protocol = "gs"
    return protocol, path.rstrip("/")


def canonical(url: str | os.PathLike) -> str:
    """An absolute URL: plain absolute path on local disk (Ray workers may run in another working
    directory), "scheme://path" elsewhere."""
    protocol, path = _split(url)
    return path if protocol == "file" else f"{protocol}://{path}"


def _s3_options() -> dict[str, Any]:
    # botocore also reads AWS_ENDPOINT_URL itself; passing it makes it part of fsspec's cache key,
    # so a changed endpoint (tests) never reuses an instance built for the old one.
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


def _emulator_host() -> str | None:
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host or host == "default":
        return None
    return host if "://" in host else f"http://{host}"


def _gcs_options() -> dict[str, Any]:
    # The emulator checks no credentials; without "anon" gcsfs would look for Google ones.
    host = _emulator_host()
    return {"endpoint_url": host, "token": "anon"} if host else {}


def _version(fs: fsspec.AbstractFileSystem, name: str, info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    if isinstance(fs, LocalFileSystem):
        return str(os.stat(name).st_mtime_ns)  # info's float mtime drops the nanoseconds
    for key in ("generation", "mtime", "LastModified", "updated", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _temporary(path: str) -> str:
    """A hidden temporary name beside the local file `path` (listings skip it; ".part" says what it is)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.part")


def _probe_name() -> str:
    return f".star-write-probe-{uuid.uuid4().hex[:12]}"


def _check_local(url: str, path: str, writable: bool) -> None:
    if not writable:
        if not os.path.isdir(path):
            what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
            raise ValueError(f"input folder {url} {what}; check the path (on a cluster it must be a "
                             f"folder every node sees, such as a shared mount, or a bucket URL)")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"no permission to read {url}; fix its permissions or run as its owner")
        return
    probe = os.path.join(path, _probe_name())
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
        os.remove(probe)
    except PermissionError as e:
        raise ValueError(f"no permission to write to {url} ({e.strerror}); choose a folder you can "
                         f"write or fix its permissions") from e
    except OSError as e:
        raise ValueError(f"cannot write to {url} ({e.strerror or e}); choose another output folder") from e


def _check_bucket(protocol: str, url: str, path: str, writable: bool, *, endpoint: str | None,
                  endpoint_var: str) -> None:
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{url} names no bucket; write it as {protocol}://BUCKET/FOLDER")
    if endpoint:
        _check_connect(endpoint, endpoint_var)
    fs = _checking_filesystem(protocol)
    where = f"{protocol}://{bucket}" + (f" at {endpoint} (from {endpoint_var})" if endpoint else "")
    try:
        # 1. the bucket
        if protocol == "s3":
            _within(fs, fs._call_s3("head_bucket", Bucket=bucket))
        else:
            _within(fs, fs._call("GET", "b/{}", bucket, json_out=True))
    except FileNotFoundError as e:
        raise ValueError(f"bucket {protocol}://{bucket} does not exist{' at ' + endpoint if endpoint else ''}; "
                         f"create it or fix the URL {url}") from e
    except Exception as e:
        raise _store_error(e, url, where, "list") from e
    # 2. the folder (inputs) or a write (outputs)
    try:
        if writable:
            probe = posixpath.join(path, _probe_name())
            _within(fs, fs._pipe_file(probe, b"probe"))
            _within(fs, fs._rm_file(probe))
        elif path != bucket:
            _within(fs, fs._info(path))
    except FileNotFoundError as e:
        raise ValueError(f"input folder {url} does not exist (no objects under it); check the URL") from e
    except Exception as e:
        raise _store_error(e, url, where, "write to" if writable else "list") from e


def _checking_filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    """A private instance with short timeouts and no retries: a dead endpoint must fail in seconds,
    not after the minutes of back-off the cached instances use to ride out transient errors."""
    if protocol == "s3":
        config = {"connect_timeout": _CONNECT_SECONDS, "read_timeout": _CHECK_SECONDS,
                  "retries": {"max_attempts": 1}}
        return fsspec.filesystem("s3", skip_instance_cache=True, use_listings_cache=False,
                                 config_kwargs=config, **_s3_options())
    # gcsfs retries six times with back-off whatever it is told; `_within` bounds the total.
    return fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False,
                             requests_timeout=_CHECK_SECONDS, **_gcs_options())


def _within(fs: fsspec.AbstractFileSystem, coro: Any) -> Any:
    """Run one of the filesystem's coroutines on its loop, cancelled after `_CHECK_SECONDS`."""
    return sync(fs.loop, asyncio.wait_for, coro, _CHECK_SECONDS)


def _check_connect(endpoint: str, endpoint_var: str) -> None:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=_CONNECT_SECONDS):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(f"cannot connect to the object store at {endpoint} ({reason}); it comes from "
                         f"{endpoint_var}: check that the server is running and the variable is right, "
                         f"or unset it to use the cloud's own endpoint") from e


def _store_error(e: Exception, url: str, where: str, action: str) -> ValueError:
    """Turn what s3fs, gcsfs, botocore or aiohttp raised into a message that says what to do."""
    kind = type(e).__name__
    text = str(e) or kind
    if isinstance(e, TimeoutError):
        return ValueError(f"no answer from {where} within {_CHECK_SECONDS:.0f} s while checking {url}; "
                          f"check the network, proxy and endpoint")
    if kind in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError", "RefreshError"):
        return ValueError(f"no usable credentials for {url} ({text}); for s3:// set AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE, for gs:// GOOGLE_APPLICATION_CREDENTIALS, "
                          f"or run on a node with an instance role / service account")
    if isinstance(e, PermissionError) or any(w in text for w in ("Forbidden", "AccessDenied", "403")):
        return ValueError(f"no permission to {action} {url} ({text}); grant the job's credentials access "
                          f"to the bucket or use another one")
    if "Connect" in kind or isinstance(e, ConnectionError):
        return ValueError(f"cannot reach {where} ({text}); check the endpoint and the network")
    return ValueError(f"cannot {action} {url}: {kind}: {text}")
