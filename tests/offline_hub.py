"""A Hugging Face Hub cache built offline, with TINY-shaped STAR, CLIP and VAE files, and the weights
folders fetched from it: the fixtures `hub`, `fetched` and `bucket_weights` (conftest.py hands them on).

No network: the hub's own cache layout (models--ORG--NAME/blobs, snapshots/<commit>/..., refs/main) is
built in a temporary folder and huggingface_hub runs offline against it, so `fetch` goes through the
real `hf_hub_download` calls. The library reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at import, so
the fixture sets its constants as well as the variables (for children).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import CLIPTokenizer

from helpers import save_tiny_clip_model
from pipelines import storage
from pipelines.hub import TEXT_FILES, fetch
from pipelines.listing import list_files
from star_model import vae as vae_configs
from star_model.checkpoint import sha256_of
from star_model.denoiser_config import TINY
from star_model.text import write_tiny_tokenizer
from star_model.unet import load_denoiser
from star_model.vae import build_vae
from star_model.weights_folder import STAR_REPO, TEXT_REPO, VAE_REPO

COMMITS = {STAR_REPO: "1" * 40, TEXT_REPO: "2" * 40, VAE_REPO: "3" * 40}
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
    return set(list_files(str(folder)))


@pytest.fixture
def bucket_weights(s3_server, fetched):
    """A fetched folder uploaded to a fresh S3 folder as is (manifest included)."""
    url = s3_server.fresh("weights")
    fs, path = storage.filesystem(url)
    for rel in listing(fetched[0]):
        fs.put_file(str(fetched[0] / rel), f"{path}/{rel}")
    return url
