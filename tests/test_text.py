"""Text encoder: open_clip's tokenisation and padding rules, the penultimate-layer + ln_final output
recomputed by hand, the official prompt strings, caching, and loading from local HF folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPTokenizer

from helpers import save_tiny_clip_model
from star_model import denoiser_config
from star_model import text
from star_model.text import NEGATIVE_PROMPT, POSITIVE_PROMPT, TextEncoder

# Ids made by open_clip 2.24's own `SimpleTokenizer` (the tokenizer the official STAR calls) with a
# bpe file holding `text.TINY_MERGES`, recorded once. The second text is truncated to 77 tokens.
GOLDEN_TINY = {
    "the  Thing's   ringing, 42 Café!":
        [528, 513, 512, 515, 6, 338, 81, 514, 70, 515, 267, 275, 273, 66, 64, 69, 127, 358, 256, 529],
    "a good video" + POSITIVE_PROMPT:
        [528, 320, 70, 78, 78, 323, 85, 72, 523, 78, 66, 514, 68, 76, 525, 72, 322, 267, 71, 72, 70,
         327, 66, 522, 83, 81, 64, 82, 339, 267, 71, 72, 70, 71, 75, 344, 523, 83, 64, 72, 75, 524,
         267, 83, 64, 74, 68, 333, 84, 82, 515, 320, 66, 517, 78, 333, 68, 78, 338, 337, 66, 64, 76,
         516, 320, 267, 71, 88, 79, 68, 337, 523, 83, 64, 72, 75, 529],
}
# Same, with the real 49,408-token vocabulary (open_clip's bpe_simple_vocab_16e6.txt.gz): the exact
# ids the official code feeds its text tower for the default prompt and for the negative prompt.
GOLDEN_REAL = {
    "a good video" + POSITIVE_PROMPT:
        [49406, 320, 886, 1334, 1566, 855, 7900, 267, 1400, 18501, 267, 5302, 12609, 267, 2807, 1996,
         320, 9310, 17805, 337, 3934, 267, 22146, 12609, 1125, 268, 16157, 13162, 7657, 267, 274, 273,
         330, 267, 3140, 19016, 267, 8118, 4414, 267, 8331, 613, 890, 4281, 23163, 267, 3575, 28267,
         23163, 267, 22146, 17126, 1294, 267, 1878, 2193, 561, 37715, 269, 49407],
    NEGATIVE_PROMPT:
        [49406, 3086, 267, 2870, 3086, 267, 6052, 267, 3610, 267, 794, 267, 5269, 267, 2870, 3086, 267,
         7651, 267, 14740, 1844, 267, 274, 323, 13024, 267, 15636, 5857, 267, 12102, 2540, 267, 7615,
         267, 15987, 267, 5719, 3027, 267, 1042, 3027, 267, 15479, 267, 2505, 2110, 267, 9189, 267, 73,
         11207, 30249, 267, 561, 6528, 267, 1049, 934, 267, 962, 268, 8990, 49407],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> CLIPTokenizer:
    folder = text.write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> TextEncoder:
    return TextEncoder(text.build_text_model(text.TINY, seed=0), tokenizer)


def _open_clip_reference(model, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's text tower by hand from the same weights: embeddings, every residual block but the
    last with a causal mask and no padding mask, then ln_final; all 77 tokens."""
    sd = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    cfg = model.config
    d, heads, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.layer_norm_eps
    b, n = ids.shape
    x = sd["embeddings.token_embedding.weight"][ids] + sd["embeddings.position_embedding.weight"][:n]
    causal = torch.full((n, n), float("-inf")).triu(1)  # open_clip's build_causal_mask
    for i in range(cfg.num_hidden_layers - 1):  # "penultimate": the last block is skipped
        p = f"encoder.layers.{i}."

        def lin(h, name):
            return F.linear(h, sd[p + name + ".weight"], sd[p + name + ".bias"])

        h = F.layer_norm(x, (d,), sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], eps)
        q, k, v = (lin(h, f"self_attn.{s}_proj").view(b, n, heads, d // heads).transpose(1, 2)
                   for s in "qkv")
        weights = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5 + causal, dim=-1)
        x = x + lin((weights @ v).transpose(1, 2).reshape(b, n, d), "self_attn.out_proj")
        h = F.layer_norm(x, (d,), sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], eps)
        x = x + lin(F.gelu(lin(h, "mlp.fc1")), "mlp.fc2")  # exact GELU, as ViT-H-14
    return F.layer_norm(x, (d,), sd["final_layer_norm.weight"], sd["final_layer_norm.bias"], eps)


def test_official_prompt_strings():
    assert len(POSITIVE_PROMPT) == 256
    assert len(NEGATIVE_PROMPT) == 246
    assert "camera,   hyper" in POSITIVE_PROMPT and "detailing,  skin" in POSITIVE_PROMPT
    assert re.findall(r" {2,}", POSITIVE_PROMPT) == ["   ", "  "]  # only those two runs
    assert "  " not in NEGATIVE_PROMPT
    assert POSITIVE_PROMPT.startswith("Cinematic,") and POSITIVE_PROMPT.endswith("deformations.")
    assert NEGATIVE_PROMPT.startswith("painting,") and NEGATIVE_PROMPT.endswith("over-smooth")


def test_configs():
    assert text.OFFICIAL.hidden_size == 1024 and text.OFFICIAL.num_layers == 24
    assert text.OFFICIAL.num_heads == 16 and text.OFFICIAL.intermediate_size == 4096
    assert text.OFFICIAL.hidden_act == "gelu" and text.OFFICIAL.vocab_size == 49408
    assert text.TINY.hidden_size == denoiser_config.TINY.context_dim
    assert text.OFFICIAL.hidden_size == denoiser_config.OFFICIAL.context_dim
    with pytest.raises(ValueError, match="num_heads"):
        text.TextConfig(hidden_size=40, num_heads=3)


def test_tiny_tokenizer_layout(tokenizer):
    assert len(tokenizer) == text.TINY_VOCAB_SIZE
    assert text.tiny_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert tokenizer.convert_tokens_to_ids("!") == 0  # as in the real CLIP vocabulary
    assert tokenizer.bos_token_id == text.TINY.bos_token_id
    assert tokenizer.eos_token_id == text.TINY.eos_token_id
    # HF pads with <|endoftext|>; `tokenize` must not rely on it
    assert tokenizer.pad_token_id != text.PAD_ID


def test_tokenize_matches_open_clip(tokenizer):
    ids = text.tokenize(tokenizer, list(GOLDEN_TINY))
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    for row, golden in zip(ids, GOLDEN_TINY.values()):
        assert row[: len(golden)].tolist() == golden
        assert (row[len(golden):] == 0).all()


def test_padding_is_zero_after_end_token(tokenizer):
    ids = text.tokenize(tokenizer, ["", "a good video"])
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert ids[0, :2].tolist() == [sot, eot] and (ids[0, 2:] == 0).all()
    end = ids[1].tolist().index(eot)
    assert ids[1, 0] == sot and (ids[1, end + 1:] == 0).all() and (ids[1, 1:end] != 0).all()


def test_truncation_keeps_end_token(tokenizer):
    long_text = "words " * 200
    body = tokenizer(long_text, add_special_tokens=False, verbose=False)["input_ids"]
    ids = text.tokenize(tokenizer, [long_text])[0]
    assert len(body) > 77
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids[1:-1].tolist() == body[:75]


def test_output_is_penultimate_layer_then_final_ln(encoder, tokenizer):
    prompts = ["a good video" + POSITIVE_PROMPT, "", "the old film"]
    out = encoder.encode(prompts)
    assert out.shape == (3, 77, text.TINY.hidden_size) and out.dtype == torch.float32
    ids = text.tokenize(tokenizer, prompts)
    # (1) open_clip maths by hand: causal mask only, padding tokens computed and attended
    torch.testing.assert_close(out, _open_clip_reference(encoder.model, ids), rtol=1e-5, atol=1e-5)
    # (2) transformers' own hidden_states[-2] + final_layer_norm, with an explicit all-ones mask
    #     (which must not change anything: no padding mask in open_clip)
    with torch.no_grad():
        hf = encoder.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        torch.testing.assert_close(out, encoder.model.final_layer_norm(hf.hidden_states[-2]))
        # and it is not the last layer's output
        assert not torch.allclose(out, hf.last_hidden_state, atol=1e-3)


def test_batch_composition_does_not_matter(encoder):
    together = encoder.encode(["a cat", "a long prompt about a dog running"])
    alone = encoder.encode(["a cat"])
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)


def test_suffix_is_appended_without_separator(encoder):
    cond, uncond = encoder.context_for("a good video")
    assert cond.shape == uncond.shape == (1, 77, text.TINY.hidden_size)
    assert torch.equal(cond, encoder.encode(["a good video" + POSITIVE_PROMPT]))
    assert torch.equal(uncond, encoder.encode([NEGATIVE_PROMPT]))
    assert not torch.allclose(cond, encoder.encode(["a good video " + POSITIVE_PROMPT]), atol=1e-3)


def test_context_is_cached(tokenizer):
    encoder = TextEncoder(text.build_text_model(text.TINY, seed=1), tokenizer)
    calls = []
    encoder.model.register_forward_hook(lambda module, args, output: calls.append(1))
    cond, uncond = encoder.context_for("a good video")
    assert len(calls) == 2  # negative prompt + conditional prompt
    cond2, uncond2 = encoder.context_for("a good video")
    assert len(calls) == 2 and cond2 is cond and uncond2 is uncond
    cond3, uncond3 = encoder.context_for("another prompt")
    assert len(calls) == 3 and uncond3 is uncond and not torch.equal(cond3, cond)


def test_load_from_full_clip_folder(tmp_path):
    clip = save_tiny_clip_model(tmp_path, seed=3)
    text.write_tiny_tokenizer(tmp_path / "tokenizer")  # tokenizer in a subfolder
    encoder = text.load_text_encoder(tmp_path)
    loaded = encoder.model.state_dict()
    assert loaded.keys() == clip.text_model.state_dict().keys()
    assert all(torch.equal(v, clip.text_model.state_dict()[k]) for k, v in loaded.items())
    ids = text.tokenize(encoder.tokenizer, ["a good video"])
    torch.testing.assert_close(encoder.encode(["a good video"]), _open_clip_reference(encoder.model, ids),
                               rtol=1e-5, atol=1e-5)


def test_load_from_text_model_folder(tmp_path):
    model = text.build_text_model(text.TINY, seed=4)
    model.save_pretrained(tmp_path)
    text.write_tiny_tokenizer(tmp_path)  # tokenizer files next to the weights
    encoder = text.load_text_encoder(tmp_path)
    reference = TextEncoder(model, encoder.tokenizer)
    assert torch.equal(encoder.encode(["x y z"]), reference.encode(["x y z"]))


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        text.load_text_encoder(tmp_path / "missing")
    text.build_text_model(text.TINY).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        text.load_text_encoder(tmp_path)


@pytest.mark.skipif(not os.environ.get("STAR_TEXT_ENCODER_DIR"),
                    reason="set STAR_TEXT_ENCODER_DIR to a local laion/CLIP-ViT-H-14 folder")
def test_real_tokenizer_matches_open_clip():
    folder = Path(os.environ["STAR_TEXT_ENCODER_DIR"])
    tokenizer = CLIPTokenizer.from_pretrained(text._tokenizer_folder(folder), local_files_only=True)
    for prompt, golden in GOLDEN_REAL.items():
        row = text.tokenize(tokenizer, [prompt])[0]
        assert row[: len(golden)].tolist() == golden and (row[len(golden):] == 0).all()
