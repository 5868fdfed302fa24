"""The text encoder (T5-XXL through transformers) and the video VAE (diffusers' `AutoencoderKLCogVideoX`)
of the CogVideoX STAR, loaded from a weights folder or built tiny and random for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from star_model.cogvideox.config import CogConfig
from star_model.transfer import to_device

TEMPORAL_COMPRESSION = 4  # the causal VAE: 1 + 4k frames -> 1 + k latent frames
SPATIAL_COMPRESSION = 8


class T5Text:
    """prompt -> T5 `last_hidden_state` (1, text_length, D) float32: padded to max_length, truncated, no
    attention mask (official FrozenT5Embedder; diffusers' CogVideoXPipeline tokenizes the same way).

    The model lives on the CPU and visits `device` for each new prompt (a job has one): T5-XXL's 9.5 GB
    would otherwise sit beside the DiT through the whole sampler (the official moves models off the GPU
    between phases too)."""

    def __init__(self, model, tokenizer, length: int, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.length = length
        self.device = torch.device(device)
        self._cache: dict[str, Tensor] = {}

    @property
    def width(self) -> int:
        return self.model.config.d_model

    @torch.inference_mode()
    def context_for(self, prompt: str) -> Tensor:
        """The prompt's embedding, computed once per prompt and kept on the CPU."""
        if prompt not in self._cache:
            ids = self.tokenizer([prompt], padding="max_length", max_length=self.length, truncation=True,
                                 add_special_tokens=True, return_tensors="pt").input_ids
            self.model.to(self.device)
            try:
                hidden = self.model(input_ids=to_device(ids, self.device)).last_hidden_state  # (1, L, D)
            finally:
                self.model.to("cpu")
            self._cache = {prompt: hidden.float().cpu()}
        return self._cache[prompt]


def load_t5(folder: Path, cfg: CogConfig, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.bfloat16) -> T5Text:
    """T5 from `folder`/text_encoder and `folder`/tokenizer (THUDM/CogVideoX-5b's subfolders). The official
    runs it in bf16; its 4.8 B parameters are 9.5 GB there. Its tokenizer is SentencePiece: transformers
    needs the `sentencepiece` package to read spiece.model."""
    from transformers import AutoTokenizer, T5EncoderModel

    model = T5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype)
    if model.config.d_model != cfg.text_dim:
        raise ValueError(f"{folder / 'text_encoder'} gives {model.config.d_model}-wide embeddings; the "
                         f"{cfg.name} network takes {cfg.text_dim}")
    return T5Text(model, AutoTokenizer.from_pretrained(folder / "tokenizer"), cfg.text_length, device)


def tiny_t5(cfg: CogConfig, seed: int = 0, device: torch.device | str = "cpu") -> T5Text:
    """A random one-layer T5 of the network's text width, with a character-level tokenizer built in
    memory (tests; no files, no sentencepiece)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=cfg.text_dim, d_kv=8, d_ff=2 * cfg.text_dim, num_layers=1,
                      num_heads=2, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5Text(T5EncoderModel(config), tokenizer, cfg.text_length, device)


class CogVae:
    """Frames (F, 3, H, W) in [-1, 1] <-> latents (1, 16, T, H/8, W/8) scaled by the config's factor.

    Any F: the causal VAE takes 1 + 4k frames, so the clip is padded with copies of its last frame
    (ours; the official takes exactly 25) and the decode cut back. Frames larger than diffusers' tile
    (240x360 pixels) go through its spatial tiling, which bounds device memory at any size."""

    def __init__(self, model, scaling: float) -> None:
        self.model = model.eval()
        self.scaling = scaling

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def encode(self, frames: Tensor, generator: torch.Generator) -> Tensor:
        """Samples the posterior as the official does (DiagonalGaussianRegularizer(sample=True)), with noise
        from the CPU `generator`: the same latents on every machine."""
        count = frames.shape[0]
        padded = -(-(count - 1) // TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION + 1
        frames = torch.cat([frames, frames[-1:].expand(padded - count, -1, -1, -1)])  # (F', 3, H, W)
        self._tile_if_large(frames.shape[-2:])
        video = to_device(frames.permute(1, 0, 2, 3).unsqueeze(0), self.device, self.dtype)  # (1, 3, F', H, W)
        posterior = self.model.encode(video).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
        latent = posterior.mean.float() + posterior.std.float() * to_device(noise, self.device)
        return latent * self.scaling  # (1, 16, T, h, w) float32

    @torch.inference_mode()
    def decode(self, latents: Tensor, frames: int) -> Tensor:
        """(1, 16, T, h, w) -> the first `frames` frames (frames, 3, H, W) float32 in [-1, 1] (not clamped), CPU."""
        self._tile_if_large(tuple(s * SPATIAL_COMPRESSION for s in latents.shape[-2:]))
        video = self.model.decode(to_device(latents / self.scaling, self.device, self.dtype)).sample
        return video[0, :, :frames].permute(1, 0, 2, 3).float().cpu()

    def _tile_if_large(self, hw: tuple[int, int]) -> None:
        if hw[0] > self.model.tile_sample_min_height or hw[1] > self.model.tile_sample_min_width:
            self.model.enable_tiling()
        else:
            self.model.disable_tiling()


def load_vae(folder: Path, cfg: CogConfig, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.bfloat16) -> CogVae:
    """The VAE in `folder` (THUDM/CogVideoX-5b's subfolder vae). The network's latent scale is the config's
    (the STAR yaml's scale_factor), which the VAE's own config must agree with."""
    from diffusers import AutoencoderKLCogVideoX

    model = AutoencoderKLCogVideoX.from_pretrained(folder, torch_dtype=dtype).to(device)
    if abs(model.config.scaling_factor - cfg.vae_scaling) > 1e-6:
        raise ValueError(f"{folder} has scaling_factor {model.config.scaling_factor}; the {cfg.name} network was "
                         f"trained with {cfg.vae_scaling} (fetch the VAE of its base model)")
    return CogVae(model, cfg.vae_scaling)


def tiny_vae(cfg: CogConfig, seed: int = 0, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> CogVae:
    """A random VAE of the real one's compression (8x space, 4x time, 16 channels), 8 channels wide."""
    from diffusers import AutoencoderKLCogVideoX

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), latent_channels=cfg.latent_channels,
                                       layers_per_block=1, norm_num_groups=4, scaling_factor=cfg.vae_scaling)
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)  # built in float32
    return CogVae(model, cfg.vae_scaling)
