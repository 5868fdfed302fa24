"""Weights folders (pipelines.weights, star_model.presets): the layout and what a folder lacks, the check
before a job starts, copies of a bucket folder on a node, and loading what was fetched, in the restorer,
in fine-tuning and in the restore job (the folders come from the offline hub of offline_hub.py)."""

from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import pytest
import torch

from helpers import small_archive
from offline_hub import FETCHED, listing
from pipelines import storage, weights
from pipelines.weights import MANIFEST, check, local_copy
from star_model.checkpoint import CheckpointError
from star_model.presets import get_preset, load_restorer, resolve_weights
from star_model.restore import RestoreConfig
from star_model.weights_folder import missing_weights

pytestmark = pytest.mark.timeout(120)

TINY_PRESET = get_preset("tiny")


# -- the layout ------------------------------------------------------------------------------------


def test_missing_pieces_are_all_listed(tmp_path):
    lines = missing_weights(set())
    assert [line.split(":")[0] for line in lines] == [
        "no STAR checkpoint", "no text encoder config", "no text encoder weights", "no tokenizer",
        "no VAE config", "no VAE weights"]
    assert "I2VGen-XL-based/light_deg.pt" in lines[0] and "huggingface.co/SherryX/STAR" in lines[0]
    complete = {"star/heavy_deg.pt", "text/config.json", "text/model.safetensors", "text/tokenizer/vocab.json",
                "text/tokenizer/merges.txt", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"}
    assert missing_weights(complete, "heavy_deg") == []
    assert missing_weights(complete - {"star/heavy_deg.pt"}, None) == []  # fine-tuning from VEnhancer
    assert missing_weights(complete - {"text/tokenizer/merges.txt"}, "heavy_deg")[0].startswith("no tokenizer")
    with pytest.raises(ValueError, match="checkpoint 'medium_deg'"):
        missing_weights(complete, "medium_deg")
    # resolve_weights (local) says all of it at once; tiny runs with random weights only without a folder
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    with pytest.raises(ValueError) as error:
        resolve_weights(TINY_PRESET, tmp_path)
    assert str(error.value).count("\n  - no ") == 5 and "VAE config" not in str(error.value)
    assert resolve_weights(TINY_PRESET, None) is None
    with pytest.raises(ValueError, match="needs --weights"):
        resolve_weights(get_preset("official"), None)


# -- check -----------------------------------------------------------------------------------------


def test_check_lists_every_missing_piece_and_size_mismatches(fetched, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(fetched[0], folder)
    for rel in ("star/light_deg.safetensors", "text/model.safetensors", "vae/config.json"):
        (folder / rel).unlink()
    with (folder / "text/config.json").open("a") as f:
        f.write(" ")
    with pytest.raises(ValueError) as error:
        check(TINY_PRESET, str(folder))
    message = str(error.value)
    assert message.startswith(f"weights folder {folder} is incomplete")
    for piece in ("no STAR checkpoint", "no text encoder weights", "no VAE config"):
        assert f"  - {piece}: " in message
    for rel in ("star/light_deg.safetensors", "text/model.safetensors", "vae/config.json"):
        assert f"{rel} is listed in {MANIFEST} but missing" in message
    assert "text/config.json has" in message and "manifest.json says" in message
    with pytest.raises(ValueError, match="weights .* does not exist"):
        check(TINY_PRESET, str(tmp_path / "nowhere"))
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="is not a weights manifest"):
        check(TINY_PRESET, str(folder))


# -- local_copy ------------------------------------------------------------------------------------


def counting_downloads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = weights._download_verified

    def download(remote, local, sha256):
        calls.append(remote)
        real(remote, local, sha256)

    monkeypatch.setattr(weights, "_download_verified", download)
    return calls


def test_local_copy_of_a_local_folder_is_the_folder(fetched):
    assert local_copy(str(fetched[0])) == str(fetched[0])


def test_concurrent_copies_download_once(bucket_weights, tmp_path, monkeypatch):
    calls = counting_downloads(monkeypatch)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(local_copy(bucket_weights, tmp_path))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert sorted(calls) == sorted(storage.join(bucket_weights, rel) for rel in FETCHED)  # each file once


def test_interrupted_and_corrupted_copies_are_repaired(bucket_weights, tmp_path, monkeypatch, caplog):
    calls = counting_downloads(monkeypatch)
    counted = weights._download_verified

    def crash_on_fourth(remote, local, sha256):
        if len(calls) == 3:
            raise OSError("node lost its network")
        counted(remote, local, sha256)

    monkeypatch.setattr(weights, "_download_verified", crash_on_fourth)
    with pytest.raises(OSError, match="network"):
        local_copy(bucket_weights, tmp_path)
    folder = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert not (folder / weights._VERIFIED).exists()  # never looks complete
    monkeypatch.setattr(weights, "_download_verified", counted)
    assert local_copy(bucket_weights, tmp_path) == str(folder)
    assert len(calls) == len(FETCHED)  # the three finished files were kept (their digests checked)

    # a cache file changed after its check: found by its stat, copied again
    victim = folder / "text/config.json"
    good = victim.read_bytes()
    victim.write_bytes(good.replace(b"{", b"[", 1))
    with caplog.at_level(logging.WARNING, logger="pipelines.weights"):
        local_copy(bucket_weights, tmp_path)
    assert victim.read_bytes() == good and "copying it again" in caplog.text
    assert len(calls) == len(FETCHED) + 1

    # a corrupt bucket file is refused and leaves no trace in the cache
    fs, path = storage.filesystem(bucket_weights)
    fs.pipe_file(f"{path}/text/config.json", good.replace(b"{", b"[", 1))
    victim.unlink()
    with pytest.raises(CheckpointError, match="SHA-256 .* differs"):
        local_copy(bucket_weights, tmp_path)
    assert not victim.exists() and not (folder / weights._VERIFIED).exists()
    assert not [p for p in folder.rglob(".*.part")]


def test_a_bucket_without_manifest_is_not_copied(bucket_weights, tmp_path):
    storage.remove(storage.join(bucket_weights, MANIFEST))
    with pytest.raises(ValueError, match="no manifest.json.*jobs/fetch_weights.py"):
        local_copy(bucket_weights, tmp_path)
    with pytest.raises(ValueError, match=r"\n  - no manifest.json: a bucket folder is copied"):
        check(TINY_PRESET, bucket_weights)  # refused before Ray, not on the nodes


# -- loading what was fetched ----------------------------------------------------------------------


def test_tiny_preset_loads_the_fetched_weights_strictly(hub, fetched):
    config = RestoreConfig(scale=2, solver_mode="normal", steps=1)
    restorer = load_restorer("tiny", fetched[0], config=config, device="cpu", dtype=torch.float32)
    loaded = restorer.denoiser.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in hub[2].items())
    random = load_restorer("tiny", None, config=config, device="cpu", dtype=torch.float32).denoiser.state_dict()
    assert not all(torch.equal(random[k], v) for k, v in hub[2].items())
    frames = np.random.default_rng(0).integers(0, 256, (2, 16, 24, 3), dtype=np.uint8)
    out = restorer(frames, "")
    assert out.shape == (2, 32, 48, 3) and out.dtype == np.uint8


def test_finetune_checks_and_loads_weights_from_a_bucket(hub, bucket_weights, tmp_path, monkeypatch):
    from pipelines.finetune.config import FinetuneConfig, check_finetune_weights
    from pipelines.finetune.step import build_finetune_models

    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    cfg = FinetuneConfig(data=str(tmp_path), storage=str(tmp_path), preset="tiny", weights=bucket_weights)
    check_finetune_weights(TINY_PRESET, cfg)
    denoiser, _, _ = build_finetune_models(cfg, torch.device("cpu"))
    assert all(torch.equal(denoiser.state_dict()[k], v) for k, v in hub[2].items())
    with pytest.raises(ValueError, match="checkpoint 'medium_deg'"):
        check_finetune_weights(TINY_PRESET, FinetuneConfig(data="d", storage="s", weights=bucket_weights,
                                                           checkpoint="medium_deg"))


# -- the archive job with weights in a bucket ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_archive_job_restores_with_weights_from_a_bucket(bucket_weights, tmp_path, monkeypatch):
    from pipelines.restore.job import ArchiveJob
    from pipelines.restore.pipeline import run

    monkeypatch.setenv("RAY_ADDRESS", "local")  # a fresh local Ray, never a `ray start` cluster
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))  # inherited by the restore actor
    (tmp_path / "in").mkdir()
    source = small_archive(tmp_path / "in")
    (source / "notes.mp4").unlink()
    summary = run(ArchiveJob(input=str(source), output=str(tmp_path / "out"), preset="tiny",
                             weights=bucket_weights, scale=2, steps=1, window=16, overlap=0, actors=1))
    assert (summary["done"], summary["failed"], summary["warning"]) == (1, 0, None)
    (copy,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert listing(copy) == FETCHED and (copy / weights._VERIFIED).exists()
