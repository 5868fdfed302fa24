"""Converting checkpoints to safetensors (star_model.checkpoint) and the command line that does it,
jobs/checkpoint.py (convert, sha256)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from helpers import REPO, load_job, tiny_model
from star_model.checkpoint import (PUBLISHED_SHA256, CheckpointError, convert_to_safetensors, load_checkpoint,
                                   read_state_dict, sha256_of)


# ----------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("dtype, expected", [
    (torch.float16, torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_convert_writes_dtype_and_keeps_values(tmp_path, source, dtype, expected):
    state = dict(source.state_dict())
    state["step"] = torch.tensor([1, 2, 3])  # integer tensors are copied, never cast
    src = tmp_path / "light.pt"
    torch.save({"state_dict": state}, src)
    dst = tmp_path / "out" / "light.safetensors"

    assert convert_to_safetensors(src, dst, dtype=dtype, expected_sha256=sha256_of(src)) == dst

    converted = read_state_dict(dst)
    assert set(converted) == set(state)  # safetensors stores keys sorted, not in file order
    for key, value in state.items():
        if value.is_floating_point():
            assert converted[key].dtype == expected
            torch.testing.assert_close(converted[key].float(), value, rtol=1e-2, atol=1e-2)
        else:
            assert converted[key].dtype == value.dtype and torch.equal(converted[key], value)
    with safe_open(dst, "pt") as f:
        metadata = f.metadata()
    assert metadata["source"] == "light.pt" and metadata["source_sha256"] == sha256_of(src)
    assert metadata["dtype"] == str(expected).removeprefix("torch.")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["light.pt", "light.safetensors", "out"]

    target = tiny_model(seed=2)  # float32 model from a half-precision file: cast on load
    load_checkpoint(target, dst, strict=False)
    torch.testing.assert_close(target[0].weight, source[0].weight, rtol=1e-2, atol=1e-2)


def test_convert_handles_shared_and_noncontiguous_tensors(tmp_path):
    weight = torch.randn(4, 6)
    src = tmp_path / "tied.pt"
    torch.save({"a": weight, "b": weight, "t": weight.t()}, src)
    dst = tmp_path / "tied.safetensors"

    convert_to_safetensors(src, dst, dtype="fp32")

    out = read_state_dict(dst)
    assert torch.equal(out["a"], weight) and torch.equal(out["b"], weight)
    assert torch.equal(out["t"], weight.t())


def test_convert_leaves_no_temporary_file_when_it_fails(tmp_path, source):
    src = tmp_path / "w.pt"
    torch.save(source.state_dict(), src)
    dst = tmp_path / "taken.safetensors"
    dst.mkdir()  # os.replace onto a directory fails after the temporary file was written

    with pytest.raises(OSError):
        convert_to_safetensors(src, dst, dtype="fp16")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors", "w.pt"]


def test_convert_refuses_bad_dtype_and_suffix(tmp_path, source):
    src = tmp_path / "w.pt"
    torch.save(source.state_dict(), src)
    with pytest.raises(ValueError, match="unsupported dtype"):
        convert_to_safetensors(src, tmp_path / "o.safetensors", dtype="int8")
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        convert_to_safetensors(src, tmp_path / "o.pt")


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_convert_and_sha256(tmp_path, source, capsys):
    src = tmp_path / "w.pt"
    torch.save(source.state_dict(), src)
    dst = tmp_path / "w.safetensors"

    assert load_job("checkpoint").main(["convert", str(src), str(dst), "--dtype", "bf16"]) == 0
    assert all(t.dtype == torch.bfloat16 for t in read_state_dict(dst).values())

    assert load_job("checkpoint").main(["sha256", str(dst)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{sha256_of(dst)}  {dst}"


def test_cli_verify_sha256_fails_cleanly(tmp_path, source, capsys):
    src = tmp_path / "light_deg.pt"
    torch.save(source.state_dict(), src)
    dst = tmp_path / "light_deg.safetensors"

    assert load_job("checkpoint").main(["convert", str(src), str(dst), "--verify-sha256"]) == 1

    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and PUBLISHED_SHA256["light_deg.pt"] in err
    assert not dst.exists()


def test_cli_prints_a_sha256(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"star")
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "checkpoint.py"), "sha256", str(path)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.split()[0] == hashlib.sha256(b"star").hexdigest()
