"""Safe reading, strict loading, SHA-256 checks and safetensors conversion of STAR checkpoints.

Nothing in a checkpoint is ever executed: `.pt` files go through `torch.load(weights_only=True)` and
`.safetensors` files through `safetensors.torch.load_file`; everything else is refused.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

import safetensors.torch
import torch

# Digests of the released I2VGen-XL-based checkpoints (Git LFS oids on huggingface.co/SherryX/STAR).
PUBLISHED_SHA256: dict[str, str] = {
    "light_deg.pt": "537881f0276d858fae2cdc932534fcd823468b515ff1d3bf368c2db98792d3d5",
    "heavy_deg.pt": "285e7903a561cadcc7426808987c0ac0352b3beb0351df10775bb90e6635a5e5",
}
DEFAULT_EXPECTED = ("the I2VGen-XL-based STAR checkpoint "
                    "(light_deg.pt or heavy_deg.pt from huggingface.co/SherryX/STAR)")

TORCH_SUFFIXES = frozenset({".pt", ".pth"})
SAFETENSORS_SUFFIX = ".safetensors"
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_HASH_CHUNK = 16 * 1024 * 1024  # 16 MiB: large enough to stream 8 GB quickly, small enough for RAM
_SHOW = 5  # how many offending keys an error message lists per kind

StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A file is not a usable checkpoint, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class LoadResult:
    """What `load_checkpoint` did (keys in model order); `missing` and `unexpected` can only be
    non-empty with strict=False."""

    path: Path
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


# ----------------------------------------------------------------------------------------------
# SHA-256


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed so an 8 GB checkpoint never sits in memory."""
    with open(path, "rb") as f:
        return sha256_of_stream(f)


def sha256_of_stream(f: BinaryIO) -> str:
    """Hex SHA-256 of what is left to read in an open binary file (any file object: a bucket's too)."""
    digest = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def published_sha256(path: str | os.PathLike) -> str:
    """The published digest for a file, looked up by its file name."""
    name = Path(path).name
    try:
        return PUBLISHED_SHA256[name]
    except KeyError:
        raise CheckpointError(
            f"{path}: no published SHA-256 for a file named {name!r}; known names are "
            f"{sorted(PUBLISHED_SHA256)} (rename the file or pass the digest itself)") from None


def verify_sha256(path: str | os.PathLike, expected: str) -> str:
    """Raise CheckpointError unless the file's SHA-256 is `expected`; returns the digest."""
    _require_file(Path(path))
    if expected == "published":
        expected = published_sha256(path)
    actual = sha256_of(path)
    if actual != expected.strip().lower():
        raise CheckpointError(
            f"{path}: SHA-256 mismatch: expected {expected}, got {actual} "
            "(the download is incomplete or corrupt, or it is a different file)")
    return actual


# ----------------------------------------------------------------------------------------------
# Reading


def read_state_dict(path: str | os.PathLike, under: str | None = None) -> StateDict:
    """Read a checkpoint file into a flat {name: tensor} dict without executing anything in it.
    `under`: the tensors sit under this key of the file's top-level dict (SAT's "module"), beside
    entries that are not tensors."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if suffix not in TORCH_SUFFIXES and suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(
            f"{path}: unknown checkpoint suffix {path.suffix!r}; expected one of "
            f"{sorted(TORCH_SUFFIXES | {SAFETENSORS_SUFFIX})}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    raw = _read_safetensors(path) if suffix == SAFETENSORS_SUFFIX else _read_torch(path)
    if under is not None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get(under), Mapping):
            raise CheckpointError(f"{path}: holds no mapping of tensors under {under!r}")
        raw = raw[under]
    return _as_state_dict(path, raw)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")


def _read_safetensors(path: Path) -> object:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as exc:  # safetensors raises its own Rust-side error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_torch(path: Path) -> object:
    # mmap keeps an 8 GB fp32 checkpoint on disk until load_state_dict copies it into the model, but
    # torch only supports it for the zip format (torch.save since 1.6); older files load normally.
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path}: {_torch_load_reason(exc)}") from exc


def _torch_load_reason(exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "Weights only load failed" in str(exc):
        return ("refused: the file is not a torch checkpoint of plain tensors, or its pickle needs "
                "code to load (torch.load(weights_only=True) rejected it; nothing was executed)")
    return f"not a torch checkpoint ({type(exc).__name__}: {first_line[:200]})"


def _as_state_dict(path: Path, raw: object) -> StateDict:
    # The official loader accepts a bare state dict or one wrapped under "state_dict".
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a mapping of tensors")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in raw.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} entries are not (name, tensor) pairs, e.g. {', '.join(bad[:_SHOW])}")
    return dict(raw)


# ----------------------------------------------------------------------------------------------
# Loading into a model


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, *, strict: bool = True,
                    expected_sha256: str | None = None, what: str = DEFAULT_EXPECTED) -> LoadResult:
    """Load a checkpoint into `model` after checking its keys and shapes.

    `expected_sha256` is a hex digest, "published" (look the file name up in PUBLISHED_SHA256) or
    None (no check). `what` names the expected file in error messages. Tensors are copied in place
    into the existing parameters, cast to their dtype, so the model is never duplicated.
    """
    if expected_sha256 is not None:
        verify_sha256(path, expected_sha256)
    state = read_state_dict(path)
    model_state = model.state_dict()  # references to the parameters, not copies
    missing, unexpected, misshaped = compare_keys(model_state, state)
    if misshaped or (strict and (missing or unexpected)):
        raise CheckpointError(
            _mismatch_message(Path(path), what, missing, unexpected, misshaped, strict))
    # assign=False copies into the existing parameters: keeps their dtype, device and any hooks.
    model.load_state_dict(state, strict=strict, assign=False)
    loaded = tuple(k for k in model_state if k in state)  # model order; safetensors sorts its keys
    return LoadResult(Path(path), loaded, tuple(missing), tuple(unexpected))


def compare_keys(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
                 ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, mis-shaped as (key, file shape, model shape)), in model/file order."""
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    misshaped = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in model_state.items()
                 if k in state and state[k].shape != v.shape]
    return missing, unexpected, misshaped


def _mismatch_message(path: Path, what: str, missing: Sequence[str], unexpected: Sequence[str],
                      misshaped: Sequence[tuple[str, tuple, tuple]], strict: bool) -> str:
    lines = [f"{path} does not fit the model; expected {what}."]
    if strict and missing:
        lines.append(f"  {len(missing)} missing keys (in the model, not in the file): "
                     + _first(missing))
    if strict and unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys (in the file, not in the model): "
                     + _first(unexpected))
    if misshaped:
        shown = [f"{k} file {list(a)} vs model {list(b)}" for k, a, b in misshaped]
        lines.append(f"  {len(misshaped)} mis-shaped keys: " + _first(shown))
    return "\n".join(lines)


def _first(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


# ----------------------------------------------------------------------------------------------
# Conversion to safetensors


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float16 / bfloat16 / float32 or "fp16" / "bf16" / "fp32"."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(DTYPES)} or the torch dtypes")


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike,
                           dtype: torch.dtype | str = torch.float16, *,
                           expected_sha256: str | None = None) -> Path:
    """Write the tensors of `src` to `dst` (.safetensors), floating tensors cast to `dtype`.

    The file appears atomically: it is written next to `dst` and renamed, so an interrupted run
    leaves no half-written checkpoint behind. Returns `dst`.
    """
    src, dst = Path(src), Path(dst)
    target = parse_dtype(dtype)
    if dst.suffix.lower() != SAFETENSORS_SUFFIX:
        raise CheckpointError(f"{dst}: the output must end in {SAFETENSORS_SUFFIX}")
    digest = verify_sha256(src, expected_sha256) if expected_sha256 is not None else None
    metadata = {"source": src.name}
    if digest is not None:
        metadata["source_sha256"] = digest
    return write_safetensors(read_state_dict(src), dst, target, metadata)


def write_safetensors(state: StateDict, dst: str | os.PathLike, dtype: torch.dtype | str,
                      metadata: dict[str, str]) -> Path:
    """Write `state` to `dst` atomically, floating tensors cast to `dtype`; the metadata also records the
    format and the dtype."""
    dst, target = Path(dst), parse_dtype(dtype)
    if dst.suffix.lower() != SAFETENSORS_SUFFIX:
        raise CheckpointError(f"{dst}: the output must end in {SAFETENSORS_SUFFIX}")
    metadata = {"format": "pt", **metadata, "dtype": str(target).removeprefix("torch.")}
    _save_atomically(_cast_for_saving(state, target), dst, metadata)
    return dst


def _cast_for_saving(state: StateDict, dtype: torch.dtype) -> StateDict:
    # safetensors refuses non-contiguous tensors and tensors that share storage (tied weights);
    # a shared one is cloned so each name gets its own bytes.
    out: StateDict = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _save_atomically(tensors: StateDict, dst: Path, metadata: dict[str, str]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:  # flush to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
