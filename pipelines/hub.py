"""Fetch STAR's released weights from the Hugging Face Hub into a weights folder or bucket: the checkpoint
(SHA-256 checked, converted to safetensors), the text encoder and the gated SVD VAE, then `manifest.json`,
last. A re-run skips what the manifest records as intact."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from huggingface_hub import errors as hub_errors
from huggingface_hub import hf_hub_download

from pipelines import storage
from pipelines.reachable import check_reachable
from pipelines.weights import MANIFEST, file_sizes, read_manifest
from star_model.checkpoint import DTYPES, PUBLISHED_SHA256, CheckpointError, convert_to_safetensors, sha256_of
from star_model.weights_folder import (CHECKPOINT_NAMES, COG_CHECKPOINT, COG_SAT_FILE, DEFAULT_CHECKPOINT, STAR_REPO,
                                       TEXT_REPO, VAE_REPO)

log = logging.getLogger(__name__)

# The text tower's config, both towers' safetensors (we read the text one) and the tokenizer; not the
# open_clip_* or pytorch_model.bin copies of the same weights.
TEXT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json")
VAE_VARIANTS = {"fp16": ".fp16", "fp32": ""}  # the SVD repository holds both; the official code loads fp16
# The CogVideoX STAR's T5-XXL and VAE come from its base model's repository: the 5B's by default; the 2B's
# for a checkpoint of 2B shapes (official issue #33), whose VAE config carries the 2B latent scale.
COG_BASES = {"cogvideox": "THUDM/CogVideoX-5b", "cogvideox-2b": "THUDM/CogVideoX-2b"}
VARIANTS = ("i2vgen", *COG_BASES)
# Files of the base repository as diffusers lays it out (names as listed on the Hub; not checked here)
COG_TEXT_FILES = ("text_encoder/config.json", "text_encoder/model.safetensors.index.json",
                  "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
                  "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
                  "tokenizer/added_tokens.json")
COG_VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")


class FetchError(ValueError):
    """The Hub refused or could not serve a download; the message says what to do."""


@dataclass(frozen=True)
class _Part:
    """One source of a weights folder: repository files and where each goes in the folder."""

    name: str  # "star/light_deg", "text" or "vae": the key in the manifest's "parts"
    repo: str
    files: tuple[tuple[str, str], ...]  # (path in the repository, path in the weights folder)
    request: dict[str, Any]  # what a re-run must ask for again to reuse this part


def fetch(dest: str, checkpoints: Sequence[str] = (DEFAULT_CHECKPOINT,), dtype: str = "fp32", *, keep_pt: bool = False,
          vae_variant: str = "fp16", revisions: Mapping[str, str] | None = None,
          expected_sha256: Mapping[str, str] = PUBLISHED_SHA256, variant: str = "i2vgen") -> dict[str, Any]:
    """Download the STAR checkpoint(s), the text encoder and the VAE into the weights folder `dest`
    (local, s3:// or gs://) and return its manifest.

    Files come through the Hugging Face cache (HF_HUB_CACHE; HF_TOKEN for the gated VAE). Each STAR .pt
    must match `expected_sha256` ({"light_deg.pt": hex}) before anything is written; it becomes
    star/<name>.safetensors in `dtype` (fp32 keeps the release lossless, as fine-tuning holds fp32 master
    weights; bf16 halves the file for inference), and star/<name>.pt only with `keep_pt`. `revisions`
    pins "star", "text" or "vae" to a branch, tag or commit (default main). A re-run skips the parts the
    manifest records with the same request whose files are intact (on local disk their SHA-256 is
    checked again, in a bucket their size).

    `variant` "cogvideox" (or "cogvideox-2b") fetches the CogVideoX STAR's layout instead (weights_folder.py):
    its SAT file, converted to star/cogvideox.safetensors (no digest is published for it: its SHA-256 is
    recorded, not checked), and T5-XXL and the VAE of the base model; `checkpoints` and `vae_variant` do
    not apply.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: choose one of {VARIANTS}")
    parts = (_cog_plan(variant, dtype, keep_pt, dict(revisions or {})) if variant in COG_BASES
             else _plan(checkpoints, dtype, keep_pt, vae_variant, dict(revisions or {})))
    check_reachable(dest, writable=True)
    old = read_manifest(dest) if storage.exists(storage.join(dest, MANIFEST)) else {"files": {}}
    old_parts, old_files, listed = old.get("parts", {}), old["files"], file_sizes(dest)
    todo = [p for p in parts if not (_same_request(old_parts, p) and _intact(dest, old_files, p.name, listed, True))]
    if not todo:
        log.info("%s already holds every part asked for; nothing to fetch", dest)
        return old
    # 1. Download everything, checking each STAR digest, before anything is written to `dest`.
    downloads: dict[str, list[str]] = {}
    digests: dict[str, str] = {}
    for part in todo:
        downloads[part.name] = [_hub_download(part, repo_path) for repo_path, _ in part.files]
        if "checkpoint" in part.request:
            digests[part.name] = _verified_digest(downloads[part.name][0], part.request["checkpoint"],
                                                  expected_sha256)
        elif "sat" in part.request:  # nothing published to check it against: recorded in the manifest
            digests[part.name] = sha256_of(downloads[part.name][0])
    # 2. Write the files. The old manifest goes first, so the folder reads incomplete until step 3.
    storage.remove(storage.join(dest, MANIFEST))
    renewed = {p.name for p in todo}
    records = {n: r for n, r in old_parts.items() if n not in renewed and _intact(dest, old_files, n, listed)}
    files = {rel: e for rel, e in old_files.items() if e.get("part") in records}
    with tempfile.TemporaryDirectory(prefix="star-weights-") as staging:
        for part in todo:
            records[part.name] = {**part.request, "commit": _commit(downloads[part.name][0], part.files[0][0]),
                                  "files": [repo_path for repo_path, _ in part.files],
                                  **({"sha256": digests[part.name]} if part.name in digests else {})}
            for rel, local in _outputs(part, downloads[part.name], dest, Path(staging)):
                files[rel] = {"size": os.path.getsize(local), "sha256": sha256_of(local), "part": part.name}
                _publish(local, dest, rel)
                if Path(local).is_relative_to(staging):
                    os.remove(local)  # staging holds one converted checkpoint at a time
    for rel, entry in old_files.items():  # files of a renewed part it no longer has (a dropped .pt)
        if entry.get("part") in renewed and rel not in files:
            storage.remove(storage.join(dest, rel))
    # 3. The manifest, last: its presence says the folder is complete.
    manifest = {"format": 1, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "parts": dict(sorted(records.items())), "files": dict(sorted(files.items()))}
    storage.write_bytes_atomic(storage.join(dest, MANIFEST), json.dumps(manifest, indent=1).encode())
    log.info("wrote %s: %d files", storage.join(dest, MANIFEST), len(files))
    return manifest


def _plan(checkpoints: Sequence[str], dtype: str, keep_pt: bool, vae_variant: str,
          revisions: dict[str, str]) -> list[_Part]:
    """The parts asked for; ValueError for bad arguments."""
    if not checkpoints or len(set(checkpoints)) != len(checkpoints) or set(checkpoints) - set(CHECKPOINT_NAMES):
        raise ValueError(f"checkpoints {list(checkpoints)}: name one or more of {CHECKPOINT_NAMES}, once each")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    if vae_variant not in VAE_VARIANTS:
        raise ValueError(f"VAE variant {vae_variant!r}: choose one of {sorted(VAE_VARIANTS)}")
    if set(revisions) - {"star", "text", "vae"}:
        raise ValueError(f"revisions {revisions}: the parts are star, text and vae")
    star, text, vae = (revisions.get(k, "main") for k in ("star", "text", "vae"))
    # The gated VAE first: a missing licence or token fails in seconds, not after 8 GB of STAR.
    vae_files = ("config.json", f"diffusion_pytorch_model{VAE_VARIANTS[vae_variant]}.safetensors")
    parts = [_Part("vae", VAE_REPO, tuple((f"vae/{f}", f"vae/{f}") for f in vae_files),
                   {"repo": VAE_REPO, "revision": vae, "variant": vae_variant}),
             _Part("text", TEXT_REPO, tuple((f, f"text/{f}") for f in TEXT_FILES),
                   {"repo": TEXT_REPO, "revision": text})]
    parts += [_Part(f"star/{c}", STAR_REPO, ((f"I2VGen-XL-based/{c}.pt", f"star/{c}.pt"),),
                    {"repo": STAR_REPO, "revision": star, "checkpoint": c, "dtype": dtype, "keep_pt": keep_pt})
              for c in checkpoints]
    return parts


def _cog_plan(variant: str, dtype: str, keep_pt: bool, revisions: dict[str, str]) -> list[_Part]:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    if set(revisions) - {"star", "text", "vae"}:
        raise ValueError(f"revisions {revisions}: the parts are star, text and vae")
    base = COG_BASES[variant]
    star, text, vae = (revisions.get(k, "main") for k in ("star", "text", "vae"))
    return [_Part("vae", base, tuple((f, f) for f in COG_VAE_FILES), {"repo": base, "revision": vae}),
            _Part("text", base, tuple((f, f) for f in COG_TEXT_FILES), {"repo": base, "revision": text}),
            _Part(f"star/{COG_CHECKPOINT}", STAR_REPO, ((COG_SAT_FILE, "star/mp_rank_00_model_states.pt"),),
                  {"repo": STAR_REPO, "revision": star, "sat": COG_CHECKPOINT, "dtype": dtype, "keep_pt": keep_pt})]


def _same_request(old_parts: Mapping[str, Any], part: _Part) -> bool:
    record = old_parts.get(part.name, {})
    return all(record.get(k) == v for k, v in part.request.items())


def _intact(dest: str, old_files: Mapping[str, Any], part_name: str, listed: Mapping[str, int],
            hashed: bool = False) -> bool:
    """Every file the old manifest gives `part_name` is in `dest` with its size (and, with `hashed`, on
    local disk, its SHA-256)."""
    entries = {rel: e for rel, e in old_files.items() if e.get("part") == part_name}
    fs, root = storage.filesystem(dest)
    local = hashed and isinstance(fs, LocalFileSystem)
    return bool(entries) and all(
        listed.get(rel) == e["size"] and (not local or sha256_of(os.path.join(root, rel)) == e["sha256"])
        for rel, e in entries.items())


def _hub_download(part: _Part, repo_path: str) -> str:
    """hf_hub_download of one file into the Hugging Face cache, its errors turned into what to do."""
    repo, revision = part.repo, part.request["revision"]
    where = f"huggingface.co/{repo} ({repo_path} at {revision})"
    log.info("downloading %s", where)
    try:
        return hf_hub_download(repo, repo_path, revision=revision)
    except hub_errors.GatedRepoError as e:
        raise FetchError(_gated(repo, e)) from e
    except hub_errors.RevisionNotFoundError as e:
        raise FetchError(f"{repo} has no revision {revision!r}; pass a branch, tag or commit it has") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise FetchError(f"huggingface.co/{repo} not found, or private and HF_TOKEN is not set or has no "
                         "access to it") from e
    except hub_errors.LocalEntryNotFoundError as e:
        raise FetchError(f"{where}: not in the Hugging Face cache, and the Hub cannot be reached "
                         "(no network, or HF_HUB_OFFLINE=1); run where huggingface.co is reachable") from e
    except hub_errors.EntryNotFoundError as e:  # the remote kind: the local one is caught above
        raise FetchError(f"{where}: no such file in the repository") from e
    except hub_errors.HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (401, 403):
            raise FetchError(_gated(repo, e)) from e
        raise FetchError(f"{where}: download failed ({e})") from e


def _gated(repo: str, e: Exception) -> str:
    return (f"huggingface.co/{repo} refused the download ({type(e).__name__}): it is gated, or the token has no "
            f"access; accept its licence at https://huggingface.co/{repo} while logged in, set HF_TOKEN to a read "
            "token of that account (or run `hf auth login`) and run this again")


def _verified_digest(path: str, checkpoint: str, expected_sha256: Mapping[str, str]) -> str:
    name = f"{checkpoint}.pt"
    if name not in expected_sha256:
        raise FetchError(f"no expected SHA-256 for {name}; the published ones are {PUBLISHED_SHA256}")
    actual, expected = sha256_of(path), expected_sha256[name].strip().lower()
    if actual != expected:
        raise CheckpointError(f"{path}: SHA-256 {actual}, expected {expected}; nothing was written. The download "
                              "is corrupt or not the released file: delete it from the Hugging Face cache "
                              "(`hf cache delete`) and fetch again")
    return actual


def _commit(path: str, repo_path: str) -> str | None:
    """The commit a cached file was resolved to: the cache stores it as snapshots/<commit>/<path>."""
    snapshot = Path(path).parents[len(repo_path.split("/")) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _outputs(part: _Part, downloads: list[str], dest: str, staging: Path) -> list[tuple[str, str]]:
    """(path in the weights folder, local file to publish there) for a downloaded part; the STAR .pt
    is converted first, into `dest` itself when it is local, else into `staging`."""
    if "checkpoint" not in part.request and "sat" not in part.request:
        return [(rel, path) for (_, rel), path in zip(part.files, downloads)]
    name, (pt,) = part.request.get("checkpoint") or part.request["sat"], downloads
    fs, dest_path = storage.filesystem(dest)
    base = Path(dest_path) if isinstance(fs, LocalFileSystem) else staging
    rel = f"star/{name}.safetensors"
    log.info("converting %s to %s (%s)", pt, rel, part.request["dtype"])
    if "sat" in part.request:  # the CogVideoX STAR: its key map, LoRA merged (lazily: diffusers' classes)
        from star_model.cogvideox.weights import convert_sat

        convert_sat(pt, base / rel, part.request["dtype"])
        converted = base / rel
    else:
        converted = convert_to_safetensors(pt, base / rel, part.request["dtype"])
    outputs = [(rel, str(converted))]
    return outputs + [(part.files[0][1], pt)] if part.request["keep_pt"] else outputs


def _publish(local: str, dest: str, rel: str) -> None:
    """Put a file at dest/rel whole: on local disk a hard link to the Hugging Face cache's copy where
    the filesystem allows (no second 4 GB copy), else a copy; into a bucket one upload."""
    fs, target = storage.filesystem(storage.join(dest, rel))
    source = os.path.realpath(local)  # the cache's snapshot entries are symlinks to its blobs
    if not isinstance(fs, LocalFileSystem):
        log.info("uploading %s", storage.join(dest, rel))
        fs.put_file(source, target)
        return
    if os.path.realpath(target) == source:
        return  # converted in place
    with storage.atomic_output(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem, or no hard links there
            fs.cp_file(source, tmp)
