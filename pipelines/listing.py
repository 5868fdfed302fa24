"""Listing an input: every video under a local folder or bucket prefix as a `SourceFile` (enough to
find it and to tell whether it changed since), the files skipped on purpose, and the keys no output
may be named after."""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipelines.restore.layout import STAGING_SEGMENT
from pipelines.storage import canonical, filesystem

VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
    ".3gp", ".3g2", ".dv", ".mts", ".m2ts", ".vob", ".mxf", ".ogv", ".asf",
})
_HIDDEN = re.compile(r"(^|/)\.(?!\.?(/|$))")  # a segment starting with "." other than "." and ".."
_CONTROL = re.compile(r"[\x00-\x1f]")


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One source video as listed: enough to find it, and to tell whether it changed since."""

    url: str  # absolute: a local path, or "s3://bucket/key" / "gs://bucket/key"
    rel: str  # posix path relative to the input root; the output keeps this layout
    size: int  # bytes
    version: str  # etag on buckets, modification time in ns on local disk
    checksum: str = ""  # the store's own checksum of the content ("crc32c:...", "md5:..."); "" when none

    @property
    def fingerprint(self) -> str:
        """Changes whenever the content does (size and etag/mtime), and also when a copy is made
        (`cp -r`, another bucket): the cheap check. The content's identity is `checksum`, or the
        SHA-256 the scenes stage records (`content_digest`)."""
        return f"{self.size}:{self.version}"


def list_files(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{posix path below `root`: fsspec info} of every file under `root`, recursively, hidden names
    (a file or folder starting with ".", which also hides our own temporaries) left out. A missing
    root lists nothing."""
    return dict(_find(root, {"hidden": 0}))


def _find(root: str | os.PathLike, skipped: dict[str, int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path below `root`, info) of each file of `list_files`, as listed (a local folder streams); the
    hidden ones it leaves out are counted in `skipped["hidden"]`."""
    fs, path = filesystem(root)
    prefix = path.rstrip("/") + "/"
    found = _find_local(path) if isinstance(fs, LocalFileSystem) else fs.find(path, detail=True).items()
    for name, info in found:
        if info.get("type") != "file" or not name.startswith(prefix):
            continue
        rel = name[len(prefix):]
        # "." and ".." segments (possible in bucket keys) are not hidden names: the caller must see
        # them, and refuse them (`unsafe_key`), not lose the object silently.
        if _HIDDEN.search(rel):
            skipped["hidden"] += 1
        else:
            yield rel, info


def _find_local(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, info) of every file under a local folder, with `mtime_ns`. By hand, not fsspec's
    `find`: that stats each file again for its info dict, with a float mtime that loses the
    nanoseconds (a third stat); here the one stat `scandir` makes serves (a million files: about
    3x faster)."""
    folders = [path]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                folders.append(entry.path)
            elif entry.is_file(follow_symlinks=True):
                st = entry.stat(follow_symlinks=True)
                yield entry.path, {"type": "file", "size": st.st_size, "mtime": st.st_mtime, "mtime_ns": st.st_mtime_ns}


def unsafe_key(rel: str) -> str | None:
    """Why `rel` (a path below the input root, as listed) cannot name an output, or None if it can.

    Object stores allow keys a filesystem cannot hold: "a/../b" (on a local disk or through a FUSE
    mount it names a file outside its folder), "a//b" and "/a" (empty segments, which URL joins and
    mounts collapse, so two keys land on one output), "a/./b". Sources with such keys are refused,
    never written under another name.
    """
    parts = rel.split("/")
    if rel.startswith("/"):
        return "the key has a leading '/' (an empty first segment)"
    if "" in parts:
        return "the key has an empty segment ('//')"
    if ".." in parts or "." in parts:
        return "the key has a '..' or '.' segment (it would name a place outside its folder)"
    if _CONTROL.search(rel):
        return "the key has control characters"
    return None


def case_insensitive(root: str | os.PathLike) -> bool:
    """Whether names under `root` that differ only in case are one file (macOS and Windows disks,
    some mounts). Buckets never fold case; a local folder is asked with a hidden probe file."""
    fs, path = filesystem(root)
    if not isinstance(fs, LocalFileSystem):
        return False
    os.makedirs(path, exist_ok=True)
    name = f".star-case-probe-{uuid.uuid4().hex[:12]}"
    with open(os.path.join(path, name), "wb"):
        pass
    try:
        return os.path.exists(os.path.join(path, name.upper()))
    finally:
        os.remove(os.path.join(path, name))


def list_videos(root: str | os.PathLike) -> list[SourceFile]:
    """Every video under `root`, recursively, sorted by `rel` (see `list_sources`)."""
    return list_sources(root)[0]


def list_sources(root: str | os.PathLike) -> tuple[list[SourceFile], dict[str, int]]:
    """Every video under `root`, recursively, sorted by `rel`, and the counts of files skipped on
    purpose: {"hidden": ..., "not_video": ...}.

    A video is a file whose extension (any case) is in `VIDEO_EXTENSIONS`. Skipped: hidden names
    (see `list_files`: also macOS's "._clip.mp4" companions) and the restore job's own staging
    segments (`STAGING_SEGMENT`); a user's folder named `_staging` or `_ledger` is listed. Empty
    files are listed: they must end as failed ledger rows, not vanish. A missing root lists nothing;
    `check_reachable` is the check that says so.
    """
    base = canonical(root).rstrip("/")
    skipped = {"hidden": 0, "not_video": 0}
    out = []
    for rel, info in _find(root, skipped):
        if STAGING_SEGMENT.search(rel):
            continue
        if posixpath.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS:
            skipped["not_video"] += 1
            continue
        # The key exactly as stored (`join` would collapse "//" and name another object); for
        # every other key it is what `join` gives.
        out.append(SourceFile(url=f"{base}/{rel}", rel=rel, size=int(info["size"]), version=_version(info),
                              checksum=_checksum(info)))
    out.sort(key=lambda s: s.rel)
    return out, skipped


def _version(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    if "mtime_ns" in info:  # local disk (`_find_local`)
        return str(info["mtime_ns"])
    for key in ("generation", "mtime", "LastModified", "updated", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def _checksum(info: dict[str, Any]) -> str:
    """The store's checksum of the whole content, where it has one that does not depend on how the
    object was uploaded: GCS's crc32c (every object), S3's ETag when it is a plain MD5 (single-part
    uploads without KMS; a multipart ETag ("...-N") depends on the part size, so it is not used)."""
    if info.get("crc32c"):
        return f"crc32c:{info['crc32c']}"
    etag = str(info.get("ETag") or "").strip('"')
    if etag and "-" not in etag and len(etag) == 32 and info.get("ServerSideEncryption") != "aws:kms":
        return f"md5:{etag}"
    return ""
