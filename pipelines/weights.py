"""Weights folders on local disk or in a bucket (layout in star_model/weights_folder.py): check one before
a job starts, and copy a bucket folder once per node (hub.py fetches the released weights into one).

A folder with `manifest.json` is complete (hub.py writes it last: every file's size and SHA-256, the
source repositories and their resolved commits). `check` compares sizes only (cheap: it runs on the
driver before Ray); `local_copy` verifies every SHA-256 when it copies a bucket folder to a node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem

from pipelines import listing, storage
from pipelines.reachable import check_reachable
from star_model.checkpoint import CheckpointError, sha256_of
from star_model.presets import StarPreset, resolve_weights
from star_model.weights_folder import DEFAULT_CHECKPOINT, incomplete_message, missing_weights, used_prefixes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_ENV = "STAR_WEIGHTS_CACHE"  # where `local_copy` keeps bucket folders on a node
DEFAULT_CACHE = "~/.cache/star-archive/weights"
_VERIFIED = ".verified.json"  # in a cache folder: {file: [size, mtime_ns]} when its SHA-256 was checked


# --------------------------------------------------------------------------------------------------
# Checking a folder (driver, before Ray)


def check(preset: StarPreset, url: str | None, checkpoint: str | None = DEFAULT_CHECKPOINT) -> None:
    """Raise ValueError listing everything the weights folder `url` (local, s3://, gs://) lacks, and
    every file its manifest lists that is missing or has another size. No download, no hashing.
    `url=None` is fine only for presets that run with random weights."""
    if url is None or preset.shipped is not None or not preset.has_model:
        # None: raises unless the preset's weights are optional; nano takes one local file of its layout;
        # bicubic takes none
        resolve_weights(preset, url, checkpoint)
        return
    try:
        check_reachable(url)
    except ValueError as e:
        raise ValueError(f"--weights {url}: {e}") from e
    files = file_sizes(url)
    problems = missing_weights(files, checkpoint, preset.variant)
    if MANIFEST not in files and not isinstance(storage.filesystem(url)[0], LocalFileSystem):
        problems.append(f"no {MANIFEST}: a bucket folder is copied to the nodes only with the sizes and SHA-256 "
                        "it records")
    if MANIFEST in files:
        for rel, entry in read_manifest(url)["files"].items():
            if rel not in files:
                problems.append(f"{rel} is listed in {MANIFEST} but missing")
            elif files[rel] != entry["size"]:
                problems.append(f"{rel} has {files[rel]} bytes, {MANIFEST} says {entry['size']} "
                                "(an interrupted or foreign copy)")
    if problems:
        raise ValueError(incomplete_message(url, problems))


def digest(preset: StarPreset, url: str | None, checkpoint: str | None = DEFAULT_CHECKPOINT, scale: int = 4) -> str:
    """What the restored pixels depend on in the weights, as 16 hex digits: new weights give a new
    digest (and so a new settings key), a copy of the same weights elsewhere the same one.

    A shipped-layout file (nano; without `url`, the shipped file for `scale`): its SHA-256. A folder
    with a manifest: the manifest's size and SHA-256 of the files this checkpoint uses
    (star/<checkpoint>.*, text/, vae/; for CogVideoX star/, text_encoder/, tokenizer/, vae/). A local folder without one: those files' sizes and
    modification times (a copy of it counts as new weights; jobs/fetch_weights.py writes manifests). No weights: "random"; no model (bicubic): "none".
    """
    if not preset.has_model:
        return "none"
    if preset.shipped is not None:
        return sha256_of(url or preset.shipped_file(scale))[:16]
    if url is None:
        return "random"
    used = used_prefixes(checkpoint, preset.variant)
    if storage.exists(storage.join(url, MANIFEST)):
        files = {rel: entry for rel, entry in read_manifest(url)["files"].items() if rel.startswith(used)}
    else:
        files = {rel: [info["size"], info.get("mtime")]
                 for rel, info in listing.list_files(url).items() if rel.startswith(used)}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def file_sizes(url: str) -> dict[str, int]:
    """{posix path below url: size} of every file, hidden ones (temporaries, .cache/) left out."""
    return {rel: int(info["size"]) for rel, info in listing.list_files(url).items()}


def read_manifest(url: str, raw: bytes | None = None) -> dict[str, Any]:
    """The parsed manifest of `url` (`raw`: its bytes, if already read); ValueError if it is not one
    `hub.fetch` wrote."""
    where = storage.join(url, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(where) if raw is None else raw)
        if all(isinstance(e["size"], int) and isinstance(e["sha256"], str) for e in manifest["files"].values()):
            return manifest
        reason = "a file entry has no integer size or no sha256"
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON, or not this shape
        reason = f"{type(e).__name__}: {e}"
    raise ValueError(f"{where} is not a weights manifest ({reason}); re-run jobs/fetch_weights.py --dest {url}")


# --------------------------------------------------------------------------------------------------
# Copying a bucket folder to a node (restore actors, training workers)


def local_copy(url: str, cache: str | os.PathLike | None = None) -> str:
    """A local folder with the weights of `url`: a local folder is returned as is; a bucket folder is
    copied into `cache` (default $STAR_WEIGHTS_CACHE, else ~/.cache/star-archive/weights) once per node.

    Every file is checked against the manifest's SHA-256 as it arrives; a file lock makes the actors
    of one node wait for one copy. The cache folder counts as complete only once a record of every
    verified file is written, so a crash mid-copy is finished by the next call, never trusted.
    """
    fs, _ = storage.filesystem(url)
    if isinstance(fs, LocalFileSystem):
        return storage.canonical(url)
    try:
        raw = storage.read_bytes(storage.join(url, MANIFEST))
    except FileNotFoundError:
        raise ValueError(f"{url} has no {MANIFEST}, so its files cannot be verified on copy; write the folder "
                         f"with `python jobs/fetch_weights.py --dest {url}`") from None
    files = read_manifest(url, raw)["files"]
    # The folder name changes with the manifest: a re-fetched bucket folder is copied afresh.
    key = hashlib.sha256(storage.canonical(url).encode() + b"\n" + raw).hexdigest()[:16]
    root = Path(cache or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{key}.lock"):
        _sync(url, root / key, files)
    return str(root / key)


def _sync(url: str, folder: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    marker = folder / _VERIFIED
    verified = json.loads(marker.read_text()) if marker.exists() else {}
    stats = {rel: _stat(folder / rel) for rel in files}
    if verified == stats:
        return  # every file is as it was when its digest was checked
    marker.unlink(missing_ok=True)
    for rel, entry in files.items():
        stat = stats[rel]
        if stat is not None and (stat == verified.get(rel) or (
                stat[0] == entry["size"] and sha256_of(folder / rel) == entry["sha256"])):
            continue  # unchanged since checked, or left whole by an interrupted copy
        if stat is not None:
            log.warning("%s does not match %s in %s; copying it again", folder / rel, rel, MANIFEST)
        _download_verified(storage.join(url, rel), folder / rel, entry["sha256"])
    storage.write_bytes_atomic(str(marker), json.dumps({rel: _stat(folder / rel) for rel in files}).encode())


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _download_verified(remote: str, local: Path, sha256: str) -> None:
    fs, path = storage.filesystem(remote)
    log.info("copying %s to %s", remote, local)
    with storage.atomic_output(str(local)) as tmp:  # in place only once verified
        fs.get_file(path, tmp)
        actual = sha256_of(tmp)
        if actual != sha256:
            raise CheckpointError(f"{remote}: SHA-256 {actual} differs from {sha256} in {MANIFEST}: the bucket "
                                  "copy is corrupt or was replaced; re-run jobs/fetch_weights.py into that folder")
