"""The text encoder of STAR: the OpenCLIP ViT-H-14 text tower run through transformers'
`CLIPTextModel`, giving the penultimate layer's tokens after the final LayerNorm, (B, 77, 1024) fp32.

Also the official prompt strings and the tokenisation rule of `open_clip.tokenize` (start token, BPE
tokens, end token, then zeros), which we rebuild on top of a `CLIPTokenizer` because the HF tokenizer
pads with its own pad token (for the laion folder that is `<|endoftext|>`, id 49407, not 0).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from star_model.transfer import to_device

if TYPE_CHECKING:  # transformers costs seconds to import: only where a text tower is built (never for bicubic)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# The official config strings, as Python evaluates them: the source builds them with backslash line
# continuations, which leave a run of three spaces after "camera," and two after "detailing,". The
# tokenizer collapses runs of whitespace, so the runs do not change the token ids; we keep them so the
# strings (and any log of them) are byte-identical to the official ones.
POSITIVE_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera,   "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, extreme "
    "meticulous detailing,  skin pore detailing, hyper sharpness, perfect without deformations."
)
NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, "
    "3D render, unreal engine, blurring, dirty, messy, worst quality, low quality, frames, "
    "watermark, signature, jpeg artifacts, deformed, lowres, over-smooth"
)

CONTEXT_LENGTH = 77  # tokens per prompt, start and end tokens included (all CLIP text towers)
PAD_ID = 0  # open_clip.tokenize pads with zeros (the id of "!"), whatever the tokenizer's pad token

# Keys a full CLIPModel checkpoint holds besides the text tower; loading CLIPTextModel from such a
# folder reports them as unexpected, and they are the only unexpected keys we accept.
_CLIP_NON_TEXT_PREFIXES = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")


# --------------------------------------------------------------------------------------------------
# Configuration


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP).

    Bytes that are printable Latin-1 characters map to themselves; the other 68 (controls, space,
    0x7f-0xa0, 0xad) map to the code points 256, 257, ... in byte order. The table's order (printable
    bytes first) is the order of the first 256 ids of the CLIP vocabulary, which is why "!" is id 0.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# A handful of merges so the tiny vocabulary exercises real BPE merging (including one on top of an
# earlier merge and end-of-word merges). Each entry is "left right" as in merges.txt.
TINY_MERGES: tuple[str, ...] = (
    "t h", "th e</w>", "i n", "in g</w>", "e r", "a n", "o r", "e n", "a l", "r e", "o n", "d e",
    "e d</w>", "a t", "o u", "s t",
)
TINY_VOCAB_SIZE = 2 * 256 + len(TINY_MERGES) + 2  # bytes, bytes + "</w>", merges, start, end


@dataclass(frozen=True)
class TextConfig:
    """Shape of the CLIP text tower. Defaults are OpenCLIP ViT-H-14 (laion2b_s32b_b79k).

    ViT-H-14's text tower uses exact GELU (nn.GELU), not the quick_gelu of OpenAI's CLIP models; the HF
    config of the laion folder says `"hidden_act": "gelu"` accordingly.
    """

    vocab_size: int = 49408
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    max_positions: int = CONTEXT_LENGTH
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406  # <|startoftext|>
    eos_token_id: int = 49407  # <|endoftext|>

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"TextConfig.hidden_size={self.hidden_size} is not a multiple of "
                             f"num_heads={self.num_heads}")
        if self.num_layers < 2:
            raise ValueError(f"TextConfig.num_layers={self.num_layers}: the penultimate layer is "
                             "used, so at least 2 layers are needed")
        if self.max_positions != CONTEXT_LENGTH:
            raise ValueError(f"TextConfig.max_positions={self.max_positions}: STAR's prompts are "
                             f"always {CONTEXT_LENGTH} tokens")

    def to_hf(self) -> CLIPTextConfig:
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, max_position_embeddings=self.max_positions,
            hidden_act=self.hidden_act, layer_norm_eps=self.layer_norm_eps,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=PAD_ID,
        )


OFFICIAL = TextConfig()
# hidden_size 40 = the tiny denoiser's context_dim (star_model.denoiser_config.TINY); the vocabulary is the one
# `write_tiny_tokenizer` writes, so its start/end ids are the last two.
TINY = TextConfig(vocab_size=TINY_VOCAB_SIZE, hidden_size=40, num_layers=3, num_heads=4,
                  intermediate_size=80, bos_token_id=TINY_VOCAB_SIZE - 2,
                  eos_token_id=TINY_VOCAB_SIZE - 1)


def build_text_model(config: TextConfig, seed: int = 0) -> CLIPTextModel:
    """A CLIPTextModel with random weights (seeded; the global RNG is left untouched), fp32, eval."""
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config.to_hf())
    return model.float().eval().requires_grad_(False)


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Write vocab.json + merges.txt of a tiny byte-level CLIP BPE vocabulary and return the folder.

    The layout is the real CLIP one (256 byte characters, the same with "</w>", one token per merge,
    then <|startoftext|> and <|endoftext|>), so "!" is id 0 and the start/end tokens are the last two
    ids, as in the 49,408-token vocabulary. Any text tokenises (every byte has a token), just into more
    pieces. The real vocabulary ships in the HF text-encoder folder; it cannot be fetched offline.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in TINY_MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == len(set(tokens)) == TINY_VOCAB_SIZE
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(TINY_MERGES) + "\n", "utf-8")
    return folder


def tiny_tokenizer() -> CLIPTokenizer:
    """The tiny vocabulary of `write_tiny_tokenizer`, loaded (its files go to a temporary folder)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(folder), local_files_only=True)


# --------------------------------------------------------------------------------------------------
# Tokenisation


def tokenize(tokenizer: CLIPTokenizer, texts: Sequence[str],
             context_length: int = CONTEXT_LENGTH) -> Tensor:
    """Token ids as `open_clip.tokenize` makes them: (B, context_length) int64.

    Each row is [start, BPE tokens..., end, 0, 0, ...]; a text too long keeps its first
    context_length - 1 tokens (start included) and ends with the end token. The BPE pieces come from
    the HF tokenizer (same regex split, byte-level BPE and lower-casing as open_clip); open_clip also
    runs ftfy.fix_text and html.unescape first, which only matters for broken unicode or HTML entities.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize takes a list of strings, not one string")
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    if start is None or end is None:
        raise ValueError("the tokenizer has no <|startoftext|> / <|endoftext|> token ids; "
                         "is this a CLIP tokenizer folder?")
    # No special tokens, no padding, no truncation here: those are applied below, open_clip's way.
    # verbose=False silences the "sequence longer than 77" warning, as we truncate ourselves.
    pieces = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    ids = torch.full((len(pieces), context_length), PAD_ID, dtype=torch.long)
    for row, body in enumerate(pieces):
        tokens = [start, *body, end]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = end
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids


# --------------------------------------------------------------------------------------------------
# Encoder


def _final_layer_norm(model: CLIPTextModel) -> torch.nn.LayerNorm:
    # transformers 5 puts the layers on CLIPTextModel itself; 4.x nests them under `.text_model`.
    return getattr(model, "text_model", model).final_layer_norm


class TextEncoder:
    """Prompt -> (1, 77, D) fp32 context, for the conditional and the unconditional pass.

    Loads nothing itself (see `load_text_encoder`); holds the model in fp32 on one device, as the
    official code runs the text tower in fp32 outside autocast. Embeddings are computed once per
    prompt and cached: a job with one prompt runs the text tower twice in total.
    """

    def __init__(self, model: CLIPTextModel, tokenizer: CLIPTokenizer, device: str | torch.device = "cpu",
                 positive_suffix: str = POSITIVE_PROMPT, negative_prompt: str = NEGATIVE_PROMPT) -> None:
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the text model only "
                             f"{model.config.vocab_size} embeddings; tokenizer and weights do not match")
        self.model = model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.positive_suffix = positive_suffix
        self.negative_prompt = negative_prompt
        self._cond: dict[str, Tensor] = {}
        self._uncond: Tensor | None = None

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    # no_grad, not inference_mode: the context feeds the trainable control branch during fine-tuning,
    # and inference tensors cannot be saved for backward.
    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tensor:
        """Encode texts exactly as given (no suffix): (B, 77, D) fp32 on `self.device`."""
        # 1. open_clip token ids: start, tokens, end, zeros; (B, 77)
        ids = to_device(tokenize(self.tokenizer, prompts), self.device)
        # 2. token + position embeddings and the layers. No attention_mask: the model applies its
        #    causal mask only, as open_clip's text tower (causal, no padding mask), so the zero-id
        #    padding tokens are computed and attend to everything before them, as officially. The
        #    official code stops before the last layer; we run it and drop it (1/24 of the cost of two
        #    prompts per job) to stay on transformers' public API.
        out = self.model(input_ids=ids, output_hidden_states=True)
        penultimate = out.hidden_states[-2]  # (B, 77, D); hidden_states[0] is the embedding output
        # 3. ln_final on the penultimate tokens (open_clip's FrozenOpenCLIPEmbedder, layer="penultimate")
        return _final_layer_norm(self.model)(penultimate).float()

    def context_for(self, prompt: str) -> tuple[Tensor, Tensor]:
        """(cond, uncond), each (1, 77, D): `prompt + positive suffix` and the negative prompt.

        The suffix is appended with no separator, as the official code does ("a good video" is
        encoded as "a good videoCinematic, ..."). The returned tensors are cached and shared between
        calls: do not modify them in place.
        """
        if self._uncond is None:
            self._uncond = self.encode([self.negative_prompt])
        if prompt not in self._cond:
            self._cond[prompt] = self.encode([prompt + self.positive_suffix])
        return self._cond[prompt], self._uncond


def _tokenizer_folder(folder: Path) -> Path:
    for candidate in (folder, folder / "tokenizer"):
        if (candidate / "tokenizer.json").exists() or (
                (candidate / "vocab.json").exists() and (candidate / "merges.txt").exists()):
            return candidate
    raise ValueError(f"no CLIP tokenizer files (vocab.json + merges.txt, or tokenizer.json) in {folder} "
                     f"or {folder / 'tokenizer'}; fetch laion/CLIP-ViT-H-14-laion2B-s32B-b79K completely")


def load_text_encoder(folder: str | Path, device: str | torch.device = "cpu", **kwargs) -> TextEncoder:
    """Load the text tower and tokenizer from a local HF-format folder, never from the network.

    `folder` holds either a full CLIPModel (the laion repository: config.json with a text_config and
    model.safetensors with both towers; only the `text_model.*` tensors are read) or a CLIPTextModel.
    Tokenizer files lie in the same folder or in its `tokenizer/` subfolder. Extra keyword arguments
    go to `TextEncoder` (positive_suffix, negative_prompt).
    """
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ValueError(f"text encoder folder {folder} has no config.json; download "
                         "laion/CLIP-ViT-H-14-laion2B-s32B-b79K there with the weights job first")
    tokenizer = CLIPTokenizer.from_pretrained(_tokenizer_folder(folder), local_files_only=True)
    # transformers prints a load report listing every vision-tower key as unexpected; we check the
    # keys ourselves below instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = CLIPTextModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(_CLIP_NON_TEXT_PREFIXES)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(f"{folder} is not a CLIP text tower checkpoint: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, mismatched {mismatched[:5]}")
    return TextEncoder(model, tokenizer, device=device, **kwargs)
