"""Listing an input: every video under a local folder or bucket prefix as a `SourceFile` (enough to
find it and to tell whether it changed since), the files skipped on purpose, and the keys no output
may be named after."""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from pipelines.restore.layout import STAGING_SEGMENT
from pipelines.storage import canonical, filesystem, local_url

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    ".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
    ".3gp", ".3g2", ".dv", ".mts", ".m2ts", ".vob", ".mxf", ".ogv", ".asf",
})
_HIDDEN = re.compile(r"(^|/)\.(?!\.?(/|$))")  # a segment starting with "." other than "." and ".."
_CONTROL = re.compile(r"[\x00-\x1f]")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # how os.fsdecode (surrogateescape) writes a byte that is not UTF-8


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One source video as listed: enough to find it, and to tell whether it changed since."""

    url: str  # absolute: a local path (a "file://" URL where the name is not UTF-8), "s3://bucket/key", "gs://..."
    rel: str  # posix path relative to the input root; the output keeps this layout
    size: int  # bytes
    version: str  # etag on buckets, modification time in ns on local disk
    checksum: str = ""  # the store's own checksum of the content ("crc32c:...", "md5:..."); "" when none
    sidecar: str = ""  # URL of its prompt file <name>.<ext>.txt beside it, "" when there is none
    prompt: str = ""  # the prompt it is restored with (the restore job's driver sets it: restore/prompts.py)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the content does (size and etag/mtime), and also when a copy is made
        (`cp -r`, another bucket): the cheap check. The content's identity is `checksum`, or the
        SHA-256 the scenes stage records (`content_digest`)."""
        return f"{self.size}:{self.version}"


def listed_size(fingerprint: str) -> int:
    """The size in bytes a `SourceFile.fingerprint` records."""
    return int(fingerprint.split(":", 1)[0])


SIDECAR_SUFFIX = ".txt"  # clip.mp4.txt holds the prompt of clip.mp4 (named in full: clip.mkv may lie beside it)

# What a listing leaves out, each counted (the run's summary has them as "skipped_<kind>"): every entry
# of the input is a listed file or one of these.
SKIPPED: dict[str, str] = {
    "hidden": "hidden files (names starting with '.')",
    "not_video": "files without a video extension",
    "prompt_sidecars": "prompts beside their videos (<name>.<ext>.txt: restore/prompts.py)",
    "special_files": "FIFOs, sockets and device files (never opened)",
    "links_outside": "symbolic links to places outside the input (never followed)",
    "broken_links": "dangling symbolic links and symbolic link loops",
    "duplicate_links": "symbolic links to files or folders inside the input (listed under their real names)",
    "unreadable": "folders that could not be listed (permissions, I/O errors: each is in the log)",
}


def list_files(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{posix path below `root`: fsspec info} of every file under `root`, recursively, hidden names
    (a file or folder starting with ".", which also hides our own temporaries) left out. For a folder
    the job trusts (weights: a Hugging Face cache's snapshot is links to its blobs), so symbolic links
    are followed, unlike an input's (`list_sources`). A missing root lists nothing."""
    return {rel: info for rel, _, info in _find(root, dict.fromkeys(SKIPPED, 0), follow_links=True)}


def _find(root: str | os.PathLike, skipped: dict[str, int], follow_links: bool = False
          ) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(path below `root`, URL, info) of each file under `root`, hidden names left out, as listed (a
    local folder streams); what it leaves out is counted in `skipped` (`SKIPPED`). A local name that is
    not UTF-8 is listed under its `escaped_name`, its URL `storage.local_url` (which opens the file
    itself). `follow_links`: see `_find_local`."""
    fs, path = filesystem(root)
    prefix = path.rstrip("/") + "/"
    local = isinstance(fs, LocalFileSystem)
    found = _find_local(path, skipped, follow_links) if local else fs.find(path, detail=True).items()
    base = canonical(root).rstrip("/")
    for name, info in found:
        if info.get("type") != "file" or not name.startswith(prefix):
            continue
        rel = escaped_name(name[len(prefix):])
        # "." and ".." segments (possible in bucket keys) are not hidden names: the caller must see
        # them, and refuse them (`unsafe_key`), not lose the object silently.
        if _HIDDEN.search(rel):
            skipped["hidden"] += 1
        else:
            # On buckets the key exactly as stored (`join` would collapse "//" and name another object).
            yield rel, local_url(name) if local else f"{base}/{rel}", info


def _find_local(root: str, skipped: dict[str, int], follow_links: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, info) of every regular file under a local folder, with `mtime_ns`. By hand, not fsspec's
    `find`: that stats each file again for its info dict, with a float mtime that loses the
    nanoseconds (a third stat); here the one stat `scandir` makes serves (a million files: about
    3x faster). And nothing in the folder can stop it or make it read outside `root`:

    - symbolic links are never followed, so nothing outside is opened and a file is never listed
      twice: a link to a file or folder inside the input names what the walk lists under its real
      name (`duplicate_links`); links elsewhere, dangling ones and loops are counted;
    - FIFOs, sockets and devices are counted, never opened (opening a FIFO waits for a writer);
    - a folder that cannot be listed is counted and logged by name;
    - an entry that vanishes while the walk passes is not there (the next run lists what is).

    With `follow_links` (a trusted folder), links are listed as what they lead to, each real folder
    walked once (a link to a folder above it is no endless walk); broken ones are still counted.
    """
    real_root = os.path.realpath(root)
    folders, walked = [root], set()
    while folders:
        folder = folders.pop()
        if follow_links:
            if os.path.realpath(folder) in walked:
                continue
            walked.add(os.path.realpath(folder))
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone, or replaced by a file, since its parent was listed
        except OSError as e:
            _skip(skipped, "unreadable", folder, e)
            continue
        for entry in entries:
            try:
                kind = _kind(entry, real_root, follow_links)
                if kind == "folder":
                    folders.append(entry.path)
                elif kind == "file":
                    st = entry.stat(follow_symlinks=follow_links)
                    yield entry.path, {"type": "file", "size": st.st_size, "mtime": st.st_mtime,
                                       "mtime_ns": st.st_mtime_ns}
                else:
                    _skip(skipped, kind, entry.path)
            except FileNotFoundError:
                continue  # removed since its folder was listed
            except OSError as e:
                _skip(skipped, "unreadable", entry.path, e)


def _kind(entry: os.DirEntry, real_root: str, follow_links: bool) -> str:
    """"file", "folder" or the `SKIPPED` kind of a directory entry, links judged by where they lead
    (or, with `follow_links`, taken for what they lead to)."""
    if entry.is_symlink():
        try:
            target = os.path.realpath(entry.path, strict=True)  # resolves names only: nothing is opened
        except FileNotFoundError:
            return "broken_links"
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "broken_links"
            raise
        if follow_links:
            return "folder" if os.path.isdir(target) else "file" if os.path.isfile(target) else "special_files"
        inside = os.path.commonpath([target, real_root]) == real_root
        return "duplicate_links" if inside else "links_outside"
    if entry.is_dir(follow_symlinks=False):
        return "folder"
    return "file" if entry.is_file(follow_symlinks=False) else "special_files"


def _skip(skipped: dict[str, int], kind: str, path: str, error: OSError | None = None) -> None:
    """Count `path` as skipped for `kind`, and name it in the log (but for the harmless duplicates):
    the summary has only the counts."""
    skipped[kind] += 1
    if kind != "duplicate_links":
        why = f" ({error.strerror or error})" if error is not None else ""
        log.warning("listing skips %s: %s%s", escaped_name(path), kind.replace("_", " "), why)


def escaped_name(name: str) -> str:
    """`name` with each byte that is not UTF-8 written "%XX" (os.scandir gives such a byte as a lone
    surrogate, U+DC80 + the byte, which Arrow, JSON and logs cannot carry): a Latin-1 "café.mp4" is
    "caf%E9.mp4". Its output and ledger row go by this name; the file is opened by its real one."""
    return _UNDECODABLE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}", name)


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
    """Every video under `root`, recursively, sorted by `rel`, and the counts of what the listing left
    out: {kind: count} for every kind of `SKIPPED`.

    A video is a file whose extension (any case) is in `VIDEO_EXTENSIONS`. Skipped: hidden names
    (see `list_files`: also macOS's "._clip.mp4" companions), the restore job's own staging
    segments (`STAGING_SEGMENT`), and on local disk links, special files and unreadable folders
    (`_find_local`); a user's folder named `_staging` or `_ledger` is listed. Empty files are
    listed: they must end as failed ledger rows, not vanish. A missing root lists nothing;
    `check_reachable` is the check that says so. A video's prompt file, `<name>.<ext>.txt` beside it,
    is its `sidecar` (a .txt file beside no video is just not a video).
    """
    skipped = dict.fromkeys(SKIPPED, 0)
    out, texts = [], {}
    for rel, url, info in _find(root, skipped):
        if STAGING_SEGMENT.search(rel):
            continue
        if posixpath.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS:
            if rel.lower().endswith(SIDECAR_SUFFIX):
                texts[rel[:-len(SIDECAR_SUFFIX)]] = url
            else:
                skipped["not_video"] += 1
            continue
        out.append(SourceFile(url=url, rel=rel, size=int(info["size"]), version=_version(info),
                              checksum=_checksum(info)))
    out = [dataclasses.replace(s, sidecar=texts[s.rel]) if s.rel in texts else s for s in out]
    skipped["prompt_sidecars"] = sum(bool(s.sidecar) for s in out)
    skipped["not_video"] += len(texts) - skipped["prompt_sidecars"]
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
