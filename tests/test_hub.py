"""Fetching the released weights from the Hugging Face Hub (pipelines.hub, jobs/fetch_weights.py) against
an offline hub cache (offline_hub.py): digests, conversion, reruns, buckets, and what the job says when
the Hub refuses."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

import pipelines.hub
from helpers import REPO, load_job
from offline_hub import COMMITS, FETCHED, listing
from pipelines import storage, weights
from pipelines.hub import fetch
from pipelines.weights import MANIFEST, check, local_copy
from star_model.checkpoint import CheckpointError, sha256_of
from star_model.presets import get_preset
from star_model.weights_folder import STAR_REPO, TEXT_REPO, VAE_REPO

pytestmark = pytest.mark.timeout(120)

JOB = REPO / "jobs" / "fetch_weights.py"
TINY_PRESET = get_preset("tiny")


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
