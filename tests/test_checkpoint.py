"""Tests of star_model.checkpoint on tiny real modules and real files written with torch/safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from helpers import parity, tiny_model
from star_model.checkpoint import (PUBLISHED_SHA256, CheckpointError, load_checkpoint, read_state_dict, sha256_of,
                                   verify_sha256)
from star_model.denoiser_config import TINY, DenoiserConfig
from star_model.unet import StarDenoiser


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Reading and strict loading


@pytest.mark.parametrize("layout", ["bare", "wrapped", "safetensors", "legacy_pickle_format"])
def test_strict_load_round_trip(tmp_path, source, layout):
    state = source.state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        safetensors.torch.save_file(state, path)
    elif layout == "wrapped":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": state, "step": 7}, path)
    elif layout == "legacy_pickle_format":  # pre-1.6 files cannot be memory-mapped; still readable
        path = tmp_path / "w.pth"
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path = tmp_path / "w.pt"
        torch.save(state, path)

    target = tiny_model(seed=2)
    result = load_checkpoint(target, path)

    assert_same_weights(target, source)
    assert result.loaded == tuple(state)
    assert result.missing == () and result.unexpected == ()


def test_values_are_cast_to_the_model_dtype(tmp_path, source):
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)  # float32
    target = tiny_model(seed=2).to(torch.bfloat16)

    load_checkpoint(target, path)

    for key, value in target.state_dict().items():
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, source.state_dict()[key].to(torch.bfloat16))


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, source):
    state = dict(source.state_dict())
    del state["1.bias"]                               # missing
    state["2.weight"] = torch.zeros(3)                 # unexpected
    state["0.weight"] = torch.zeros(8, 5)              # mis-shaped: model has (8, 4)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    target = tiny_model(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path, what="the tiny test model")

    message = str(info.value)
    assert str(path) in message and "the tiny test model" in message
    assert "1 missing keys" in message and "1.bias" in message
    assert "1 unexpected keys" in message and "2.weight" in message
    assert "1 mis-shaped keys" in message and "0.weight file [8, 5] vs model [8, 4]" in message
    for key, value in target.state_dict().items():  # checked before anything was copied
        assert torch.equal(value, before[key])


def test_default_message_names_the_official_checkpoint(tmp_path, source):
    path = tmp_path / "w.pt"
    torch.save({"other.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="light_deg.pt or heavy_deg.pt"):
        load_checkpoint(tiny_model(), path)


def test_long_key_lists_are_cut_to_the_first_five(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({f"extra.{i}": torch.zeros(1) for i in range(9)} | tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(), path)
    message = str(info.value)
    assert "9 unexpected keys" in message and "extra.4" in message and "(4 more)" in message
    assert "extra.5" not in message


def test_non_strict_loads_the_rest_and_reports(tmp_path, source):
    state = dict(source.state_dict())
    del state["1.bias"]
    state["extra"] = torch.zeros(2)
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(state, path)
    target = tiny_model(seed=2)

    result = load_checkpoint(target, path, strict=False)

    assert result.missing == ("1.bias",) and result.unexpected == ("extra",)
    assert set(result.loaded) == {"0.weight", "0.bias", "1.weight"}
    assert torch.equal(target.state_dict()["0.weight"], source.state_dict()["0.weight"])


def test_non_strict_still_refuses_misshaped(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_checkpoint(tiny_model(), path, strict=False)


# ----------------------------------------------------------------------------------------------
# Files that are not checkpoints


def _write_not_a_torch_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a tensor archive")


@pytest.mark.parametrize("name, write, reason", [
    ("empty.pt", lambda p: p.write_bytes(b""), "empty"),
    ("text.pt", lambda p: p.write_text("these are not weights\n"), "not a torch checkpoint"),
    ("random.pt", lambda p: p.write_bytes(os.urandom(4096)), "refused|not a torch checkpoint"),
    ("zip.pt", _write_not_a_torch_zip, "not a torch checkpoint"),
    ("random.safetensors", lambda p: p.write_bytes(os.urandom(4096)), "not a readable safetensors"),
    ("weights.txt", lambda p: p.write_text("0.1 0.2"), "unknown checkpoint suffix"),
    ("list.pt", lambda p: torch.save([torch.zeros(2)], p), "not a mapping"),
    ("mixed.pt", lambda p: torch.save({"w": torch.zeros(2), "step": 3}, p), r"'step' \(int\)"),
])
def test_non_checkpoints_are_refused(tmp_path, name, write, reason):
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError, match=reason) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tiny_model(), tmp_path / "absent.pt")


class _MakesMarker:
    """Unpickling this would run a shell command; a safe loader must refuse before that."""

    def __init__(self, marker: Path, via: str):
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "os.system":
            return os.system, (f"touch '{self.marker}'",)
        return open, (str(self.marker), "w")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # raw pickle.dumps uses protocol 4
@pytest.mark.parametrize("via", ["os.system", "open"])
@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, via, container):
    marker = tmp_path / "pwned"
    payload = {"0.weight": torch.zeros(8, 4), "evil": _MakesMarker(marker, via)}
    path = tmp_path / "light_deg.pt"
    if container == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(), path)

    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "refused" in message and "nothing was executed" in message


# ----------------------------------------------------------------------------------------------
# SHA-256


def test_sha256_matches_hashlib_and_verifies(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(100_000))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()

    assert sha256_of(path) == expected
    assert verify_sha256(path, expected.upper()) == expected
    with pytest.raises(CheckpointError) as info:
        verify_sha256(path, "0" * 64)
    assert "0" * 64 in str(info.value) and expected in str(info.value)


def test_load_checks_sha256_before_reading(tmp_path, source):
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    load_checkpoint(tiny_model(), path, expected_sha256=sha256_of(path))
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        load_checkpoint(tiny_model(), path, expected_sha256="f" * 64)


def test_published_digest_is_looked_up_by_file_name(tmp_path, source):
    official_name = tmp_path / "heavy_deg.pt"
    torch.save(source.state_dict(), official_name)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(), official_name, expected_sha256="published")
    assert PUBLISHED_SHA256["heavy_deg.pt"] in str(info.value)

    other_name = tmp_path / "mine.pt"
    torch.save(source.state_dict(), other_name)
    with pytest.raises(CheckpointError, match="no published SHA-256"):
        load_checkpoint(tiny_model(), other_name, expected_sha256="published")


# ----------------------------------------------------------------------------------------------
# The real (tiny) STAR denoiser


def test_tiny_star_denoiser_round_trip_and_parity_weights(tmp_path):
    torch.manual_seed(0)
    source = StarDenoiser(TINY)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    target = StarDenoiser(TINY)
    load_checkpoint(target, path)
    assert_same_weights(target, source)

    kwargs = json.loads(parity("tiny_config.json").read_text())["constructor_kwargs"]
    model = StarDenoiser(DenoiserConfig.from_official_kwargs(kwargs))
    fixture = parity("tiny_state_dict.safetensors")
    result = load_checkpoint(model, fixture, what="the parity fixture tiny_state_dict.safetensors")
    expected = safetensors.torch.load_file(fixture)
    assert set(result.loaded) == set(expected)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key])
