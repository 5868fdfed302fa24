"""Weights folders: fetching from the Hugging Face Hub, checking, copying from buckets, loading.

No network: the hub's own cache layout (models--ORG--NAME/blobs, snapshots/<commit>/..., refs/main) is
built in a temporary folder with TINY-shaped STAR, CLIP and VAE files, and huggingface_hub runs offline
against it, so `fetch` goes through the real `hf_hub_download` calls. The library reads HF_HUB_CACHE and
HF_HUB_OFFLINE once, at import, so the test sets its constants as well as the variables (for children).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import CLIPTokenizer

from helpers import REPO, load_job, save_tiny_clip_model, small_archive
import pipelines.hub
from pipelines import storage, weights
from pipelines.hub import TEXT_FILES, fetch
from pipelines.weights import MANIFEST, check, local_copy
from star_model import vae as vae_configs
from star_model.checkpoint import CheckpointError, sha256_of
from star_model.config import TINY
from star_model.presets import (STAR_REPO, TEXT_REPO, VAE_REPO, get_preset, load_restorer, missing_weights,
                                resolve_weights)
from star_model.restore import RestoreConfig
from star_model.text import write_tiny_tokenizer
from star_model.unet import load_denoiser
from star_model.vae import build_vae

pytestmark = pytest.mark.timeout(120)

JOB = REPO / "jobs" / "fetch_weights.py"
COMMITS = {STAR_REPO: "1" * 40, TEXT_REPO: "2" * 40, VAE_REPO: "3" * 40}
TINY_PRESET = get_preset("tiny")
FETCHED = {"star/light_deg.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
           *(f"text/{f}" for f in TEXT_FILES)}


def add_to_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Put files into the hub's cache layout: blobs named by digest, snapshot entries linking to them,
    refs/main naming the snapshot's commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for repo_path, source in files.items():
        blob = root / "blobs" / sha256_of(source)
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        entry = root / "snapshots" / COMMITS[repo] / repo_path
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMITS[repo])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(HF cache folder, SHA-256 of the tiny light_deg.pt, its state dict), with the hub offline on it."""
    work, cache = tmp_path_factory.mktemp("hub-files"), tmp_path_factory.mktemp("hf-cache")
    state = load_denoiser(TINY, None, seed=7).state_dict()
    torch.save(state, work / "light_deg.pt")
    add_to_cache(cache, STAR_REPO, {"I2VGen-XL-based/light_deg.pt": work / "light_deg.pt"})

    text = work / "text"  # as the laion repository: both towers, tokenizer files, and copies we skip
    save_tiny_clip_model(text, seed=5)
    write_tiny_tokenizer(text)
    CLIPTokenizer.from_pretrained(text, local_files_only=True).save_pretrained(text)
    (text / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|startoftext|>",
                                                              "eos_token": "<|endoftext|>"}))
    (text / "open_clip_pytorch_model.bin").write_bytes(b"a second copy of the weights: never fetched")
    add_to_cache(cache, TEXT_REPO, {p.name: p for p in text.iterdir()})

    model = build_vae(vae_configs.TINY)  # the SVD repository holds both precisions: one is fetched
    model.save_pretrained(work / "vae32")
    model.half().save_pretrained(work / "vae16", variant="fp16")
    add_to_cache(cache, VAE_REPO, {"vae/config.json": work / "vae32/config.json",
                                   "vae/diffusion_pytorch_model.safetensors":
                                       work / "vae32/diffusion_pytorch_model.safetensors",
                                   "vae/diffusion_pytorch_model.fp16.safetensors":
                                       work / "vae16/diffusion_pytorch_model.fp16.safetensors"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield cache, sha256_of(work / "light_deg.pt"), state


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory):
    """A weights folder fetched from the offline hub: (folder, manifest)."""
    dest = tmp_path_factory.mktemp("weights") / "w"
    return dest, fetch(str(dest), expected_sha256={"light_deg.pt": hub[1]})


def listing(folder: str | Path) -> set[str]:
    return set(storage.list_files(str(folder)))


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


# -- fetch -----------------------------------------------------------------------------------------


def test_fetch_into_a_local_folder(hub, fetched):
    cache, digest, state = hub
    dest, manifest = fetched
    assert listing(dest) == FETCHED | {MANIFEST}  # no .pt, no open_clip copy, one VAE precision
    assert json.loads((dest / MANIFEST).read_text()) == manifest
    for rel, entry in manifest["files"].items():
        assert entry["size"] == (dest / rel).stat().st_size and entry["sha256"] == sha256_of(dest / rel)
    assert manifest["parts"]["star/light_deg"] == {
        "repo": STAR_REPO, "revision": "main", "commit": COMMITS[STAR_REPO], "checkpoint": "light_deg",
        "dtype": "fp32", "keep_pt": False, "sha256": digest, "files": ["I2VGen-XL-based/light_deg.pt"]}
    assert manifest["parts"]["vae"]["commit"] == COMMITS[VAE_REPO] and manifest["parts"]["vae"]["variant"] == "fp16"
    assert manifest["parts"]["text"]["commit"] == COMMITS[TEXT_REPO] and manifest["created_at"]
    converted = safetensors.torch.load_file(dest / "star/light_deg.safetensors")
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], v) for k, v in state.items())
    check(TINY_PRESET, str(dest))


def test_rerun_skips_what_is_there(hub, fetched, monkeypatch):
    dest, manifest = fetched
    monkeypatch.setattr(pipelines.hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert fetch(str(dest), expected_sha256={"light_deg.pt": hub[1]}) == manifest


def test_bf16_and_kept_pt_then_a_rerun_drops_the_pt(hub, tmp_path):
    expected = {"light_deg.pt": hub[1]}
    pinned = {"text": COMMITS[TEXT_REPO]}  # a commit: read from the cache's snapshots, no refs
    manifest = fetch(str(tmp_path), dtype="bf16", keep_pt=True, revisions=pinned, expected_sha256=expected)
    assert manifest["parts"]["text"]["revision"] == manifest["parts"]["text"]["commit"] == COMMITS[TEXT_REPO]
    assert {"star/light_deg.pt", "star/light_deg.safetensors"} <= set(manifest["files"])
    assert os.path.samefile(tmp_path / "star/light_deg.pt", hub[0] / "models--SherryX--STAR/snapshots" /
                            COMMITS[STAR_REPO] / "I2VGen-XL-based/light_deg.pt")  # a hard link, no copy
    tensors = safetensors.torch.load_file(tmp_path / "star/light_deg.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    again = fetch(str(tmp_path), dtype="bf16", revisions=pinned, expected_sha256=expected)
    assert "star/light_deg.pt" not in again["files"] and not (tmp_path / "star/light_deg.pt").exists()
    assert again["parts"]["text"] == manifest["parts"]["text"]  # kept, not fetched again


def test_a_wrong_digest_is_refused_and_nothing_written(hub, tmp_path):
    with pytest.raises(CheckpointError, match="SHA-256 .*nothing was written"):
        fetch(str(tmp_path / "w"), expected_sha256={"light_deg.pt": "0" * 64})
    assert listing(tmp_path / "w") == set()


@pytest.mark.parametrize("server", ["s3_server", "gcs_server"])
def test_fetch_into_a_bucket_check_and_copy_back(hub, fetched, server, request, tmp_path, monkeypatch):
    store = request.getfixturevalue(server)
    url = store.fresh("weights")
    manifest = fetch(url, expected_sha256={"light_deg.pt": hub[1]})
    assert listing(url) == FETCHED | {MANIFEST}
    # the same files as fetched locally; safetensors writes its header's metadata in no fixed order,
    # so a converted file's digest differs from one conversion to the next
    same = {rel: e["size"] if rel.startswith("star/") else e for rel, e in manifest["files"].items()}
    assert same == {rel: e["size"] if rel.startswith("star/") else e for rel, e in fetched[1]["files"].items()}
    check(TINY_PRESET, url)
    # local_copy: every file verified into the node's cache (from $STAR_WEIGHTS_CACHE)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    copy = Path(local_copy(url))
    assert copy.parent == tmp_path / "cache" and listing(copy) == FETCHED
    assert all(sha256_of(copy / rel) == e["sha256"] for rel, e in manifest["files"].items())
    # a piece removed from the bucket: the check names it, and the manifest's entry too
    storage.remove(storage.join(url, "vae/config.json"))
    with pytest.raises(ValueError) as error:
        check(TINY_PRESET, url)
    assert "no VAE config: vae/config.json" in str(error.value)
    assert f"vae/config.json is listed in {MANIFEST} but missing" in str(error.value)


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


@pytest.fixture
def bucket_weights(s3_server, fetched):
    """A fetched folder uploaded to a fresh S3 folder as is (manifest included)."""
    url = s3_server.fresh("weights")
    fs, path = storage.filesystem(url)
    for rel in listing(fetched[0]):
        fs.put_file(str(fetched[0] / rel), f"{path}/{rel}")
    return url


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


# -- the job ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --dest"),
    (["--dest", "{tmp}", "--checkpoint", "medium_deg"], "invalid choice: 'medium_deg'"),
    (["--dest", "{tmp}", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["--dest", "{tmp}", "--revision", "unet=abc"], "write it as star=REV"),
])
def test_job_bad_arguments_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_job("fetch_weights").main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_job_refusals_exit_2(hub, tmp_path, capsys):
    job = load_job("fetch_weights")
    assert job.main(["--dest", str(tmp_path), "--checkpoint", "light_deg", "light_deg"]) == 2
    assert "once each" in capsys.readouterr().err
    assert job.main(["--dest", str(tmp_path), "--checkpoint", "heavy_deg"]) == 2  # not in the offline cache
    assert "not in the Hugging Face cache, and the Hub cannot be reached" in capsys.readouterr().err
    assert job.main(["--dest", str(tmp_path)]) == 2  # the tiny file is not the published light_deg.pt
    assert "SHA-256" in capsys.readouterr().err and not (tmp_path / MANIFEST).exists()


class _GatedHub(http.server.BaseHTTPRequestHandler):
    """Answers every request as the Hub answers for a gated repository without an accepted licence."""

    def do_HEAD(self):
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model is restricted")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


def test_job_says_how_to_get_the_gated_vae(tmp_path):
    """The real command line against a hub that refuses the VAE (asked first), with an empty cache."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    try:
        result = subprocess.run([sys.executable, str(JOB), "--dest", str(tmp_path / "w")], env=env,
                                capture_output=True, text=True, timeout=90)
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "it is gated, or the token has no access; accept its licence at " \
        "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid" in result.stderr
    assert "set HF_TOKEN" in result.stderr
    assert not (tmp_path / "w" / MANIFEST).exists()


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
