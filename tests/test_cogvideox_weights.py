"""The CogVideoX STAR's weights folder: fetched from an offline hub cache (its SAT file converted, T5 and
the VAE read back with transformers' and diffusers' classes), and a folder of TINY-shaped weights loaded
by the restore path itself."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import shared
from offline_hub import COMMITS, add_to_cache
from pipelines.hub import COG_BASES, COG_TEXT_FILES, COG_VAE_FILES, fetch
from pipelines.weights import MANIFEST, check
from star_model.cogvideox.components import tiny_t5, tiny_vae
from star_model.cogvideox.config import TINY
from star_model.cogvideox.weights import read_network
from star_model.presets import get_preset, load_restorer, restore_settings
from star_model.weights_folder import COG_SAT_FILE, STAR_REPO

BASE = COG_BASES["cogvideox"]


def _tiny_parts(work: Path) -> dict[str, Path]:
    """{path in the base repository: local file} for TINY-shaped T5 (two shards and their index, as the
    real one), tokenizer (a fast one in tokenizer_config's place; spiece.model a stand-in: sentencepiece
    is not installed here) and VAE."""
    text = tiny_t5(TINY, seed=1)
    text.model.save_pretrained(work / "t5")
    state = load_file(work / "t5" / "model.safetensors")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: state[k].contiguous() for k in keys}, work / "t5" / shard, metadata={"format": "pt"})
    (work / "t5" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    text.tokenizer.save_pretrained(work / "tok")
    (work / "tok" / "spiece.model").write_bytes(b"stand-in")
    (work / "tok" / "added_tokens.json").write_text("{}")
    specials = work / "tok" / "special_tokens_map.json"  # transformers 5 folds it into tokenizer_config.json
    if not specials.exists():
        specials.write_text(json.dumps({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tiny_vae(TINY, seed=2).model.save_pretrained(work / "vae")
    files = {f: work / "t5" / Path(f).name for f in COG_TEXT_FILES if f.startswith("text_encoder/")}
    files |= {f: work / "tok" / Path(f).name for f in COG_TEXT_FILES if f.startswith("tokenizer/")}
    return files | {f: work / "vae" / Path(f).name for f in COG_VAE_FILES}


@pytest.fixture(scope="module")
def cog_hub(tmp_path_factory, monkeypatch_module):
    work, cache = tmp_path_factory.mktemp("cog-files"), tmp_path_factory.mktemp("cog-cache")
    sat = load_file(shared("parity_cogvideox") / "tiny_state_dict.safetensors")
    torch.save({"module": sat, "iteration": 1}, work / "mp_rank_00_model_states.pt")
    monkeypatch_module.setitem(COMMITS, BASE, "4" * 40)
    add_to_cache(cache, STAR_REPO, {COG_SAT_FILE: work / "mp_rank_00_model_states.pt"})
    add_to_cache(cache, BASE, _tiny_parts(work))
    monkeypatch_module.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch_module.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_fetch_the_cogvideox_variant_and_load_its_parts(cog_hub, tmp_path):
    from diffusers import AutoencoderKLCogVideoX
    from transformers import T5EncoderModel

    dest = tmp_path / "w"
    manifest = fetch(str(dest), dtype="fp32", variant="cogvideox")
    assert set(manifest["files"]) == {"star/cogvideox.safetensors", *COG_TEXT_FILES, *COG_VAE_FILES}
    assert (dest / MANIFEST).exists() and "sha256" in manifest["parts"]["star/cogvideox"]
    assert manifest["parts"]["text"]["repo"] == BASE
    cfg, _ = read_network(dest / "star/cogvideox.safetensors")
    assert cfg == TINY
    assert T5EncoderModel.from_pretrained(dest / "text_encoder").config.d_model == TINY.text_dim
    assert AutoencoderKLCogVideoX.from_pretrained(dest / "vae").config.latent_channels == 16
    check(get_preset("cogvideox"), str(dest))
    with pytest.raises(ValueError, match="variant"):
        fetch(str(dest), variant="cogvideox-7b")


def test_a_weights_folder_of_tiny_shapes_restores_through_the_preset(tmp_path):
    """The real loading path (SAT file, T5 and VAE from_pretrained, shapes choosing the config)."""
    folder = tmp_path / "w"
    for rel, source in _tiny_parts(tmp_path).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(source.read_bytes())
    # the fast tokenizer's own file: what transformers builds from spiece.model where sentencepiece is installed
    (folder / "tokenizer" / "tokenizer.json").write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    (folder / "star").mkdir()
    sat = load_file(shared("parity_cogvideox") / "tiny_state_dict.safetensors")
    torch.save({"module": sat}, folder / "star" / "mp_rank_00_model_states.pt")
    restorer = load_restorer("cogvideox", folder, config=restore_settings("cogvideox", 2, 2), device="cpu",
                             dtype=torch.float32)
    assert restorer.network.cfg == TINY  # from the shapes, not the preset's nominal 5B
    out = restorer(np.full((5, 16, 24, 3), 128, np.uint8), "a prompt")
    assert out.shape == (5, 32, 48, 3)
    (folder / "vae" / "config.json").write_text((folder / "vae" / "config.json").read_text().replace(
        '"scaling_factor": 0.7', '"scaling_factor": 1.15258426'))
    with pytest.raises(ValueError, match="scaling_factor"):
        load_restorer("cogvideox", folder, device="cpu", dtype=torch.float32)
