"""Fail-fast checks of a folder or bucket URL, run on the driver before any GPU is requested: can it be
listed (and written), within seconds, and if not, a message that says what to do."""

from __future__ import annotations

import asyncio
import os
import posixpath
import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import fsspec
from fsspec.asyn import sync

from pipelines import storage

_CHECK_SECONDS = 10.0  # whole budget of one object-store call in `check_reachable`
_CONNECT_SECONDS = 3.0


def check_reachable(url: str | os.PathLike, *, writable: bool = False) -> None:
    """Raise `ValueError` saying what to do unless `url` can be listed (and, with `writable`,
    written: a small hidden probe object is put under it and deleted).

    Runs on the driver before any GPU is requested, so it fails fast: one connection attempt with
    a short timeout to a configured endpoint, and at most `_CHECK_SECONDS` for each store call.
    A local output folder that does not exist yet is created; an input folder must exist.
    """
    protocol, path = storage.split_url(url)
    url = os.fspath(url)
    if protocol == "file":
        _check_local(url, path, writable)
        return
    if protocol == "s3":
        _check_bucket("s3", url, path, writable, endpoint=os.environ.get("AWS_ENDPOINT_URL"),
                      endpoint_var="AWS_ENDPOINT_URL")
    elif protocol == "gs":
        _check_bucket("gs", url, path, writable, endpoint=storage.emulator_host(),
                      endpoint_var="STORAGE_EMULATOR_HOST")
    else:  # memory:// and other fsspec stores (tests): plain checks, no network to time out
        fs, path = storage.filesystem(url)
        if not writable and not fs.exists(path):
            raise ValueError(f"input folder {url} does not exist; check the URL")
        if writable:
            fs.makedirs(path, exist_ok=True)
            probe = posixpath.join(path, _probe_name())
            fs.pipe_file(probe, b"probe")
            fs.rm(probe)


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
                                 config_kwargs=config, **storage.s3_options())
    # gcsfs retries six times with back-off whatever it is told; `_within` bounds the total.
    return fsspec.filesystem("gs", skip_instance_cache=True, use_listings_cache=False,
                             requests_timeout=_CHECK_SECONDS, **storage.gcs_options())


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


def _probe_name() -> str:
    return f".star-write-probe-{uuid.uuid4().hex[:12]}"
