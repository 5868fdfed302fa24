"""The official SAT checkpoint of the CogVideoX-based STAR (`mp_rank_00_model_states.pt`, weights under
`module`) in our layout (network.py): an explicit key map, LoRA merged, loaded strictly.

Every SAT key has one fate, listed in `KeyMapReport`: renamed (RENAMES), split (qkv into q/k/v, AdaLN into
norm1/norm2), merged (LoRA pairs into the weight they adapt) or dropped (DROPPED, with the reason). A key
that matches no rule, or a rule's group missing a piece, is an error. The diffusers conversion script
(scripts/convert_cogvideox_to_diffusers.py) maps the base model by substring renames; ours is by whole
keys and knows STAR's extras (proj_sr, LIEM, LoRA), which the script would leave unmapped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from star_model.checkpoint import CheckpointError
from star_model.cogvideox.config import Position

ENGINE_PREFIX = "model.diffusion_model."  # SATVideoDiffusionEngine's network
# (pattern on the key without ENGINE_PREFIX, our key): one tensor to one tensor, unchanged
RENAMES: tuple[tuple[str, str], ...] = (
    (r"mixins\.patch_embed\.proj_sr\.(weight|bias)", r"patch_embed.proj.\1"),  # STAR's 32-channel input conv
    (r"mixins\.patch_embed\.text_proj\.(weight|bias)", r"patch_embed.text_proj.\1"),
    (r"time_embed\.0\.(weight|bias)", r"time_embedding.linear_1.\1"),
    (r"time_embed\.2\.(weight|bias)", r"time_embedding.linear_2.\1"),
    (r"transformer\.layers\.(\d+)\.input_layernorm\.(weight|bias)", r"transformer_blocks.\1.norm1.norm.\2"),
    (r"transformer\.layers\.(\d+)\.post_attention_layernorm\.(weight|bias)", r"transformer_blocks.\1.norm2.norm.\2"),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_h_to_4h\.(weight|bias)", r"transformer_blocks.\1.ff.net.0.proj.\2"),
    (r"transformer\.layers\.(\d+)\.mlp\.dense_4h_to_h\.(weight|bias)", r"transformer_blocks.\1.ff.net.2.\2"),
    (r"mixins\.adaln_layer\.query_layernorm_list\.(\d+)\.(weight|bias)", r"transformer_blocks.\1.attn1.norm_q.\2"),
    (r"mixins\.adaln_layer\.key_layernorm_list\.(\d+)\.(weight|bias)", r"transformer_blocks.\1.attn1.norm_k.\2"),
    (r"transformer\.layers\.(\d+)\.(spa_local|temp_local)\.conv1\.weight", r"transformer_blocks.\1.\2.conv1.weight"),
    (r"transformer\.final_layernorm\.(weight|bias)", r"norm_final.\1"),
    (r"mixins\.final_layer\.norm_final\.(weight|bias)", r"norm_out.norm.\1"),
    (r"mixins\.final_layer\.linear\.(weight|bias)", r"proj_out.\1"),
    (r"mixins\.final_layer\.adaLN_modulation\.1\.(weight|bias)", r"norm_out.linear.\1"),
)
# (pattern, why it is not carried over)
DROPPED: tuple[tuple[str, str], ...] = (
    (r"mixins\.pos_embed\.freqs_(sin|cos)", "RoPE tables for 13x30x45 only; remade for the size at hand"),
    (r"mixins\.pos_embed\.pos_embedding", "2B's fixed sin-cos table; diffusers makes it for the size at hand"),
    (r"transformer\.position_embeddings\.weight", "SAT's learned positions, never used by the forward"),
)
# Outside the network: the engine may also hold the text encoder and the VAE; both come from their own
# repositories (weights_folder: text/, vae/), so they are dropped here, by prefix, and counted.
OTHER_PARTS = ("conditioner.", "first_stage_model.")
QKV = r"transformer\.layers\.(\d+)\.attention\.query_key_value\.(?:original\.)?(weight|bias)"
DENSE = r"transformer\.layers\.(\d+)\.attention\.dense\.(?:original\.)?(weight|bias)"
LORA = r"transformer\.layers\.(\d+)\.attention\.(query_key_value|dense)\.matrix_([AB])\.(\d+)"
ADALN = r"mixins\.adaln_layer\.adaLN_modulations\.(\d+)\.1\.(weight|bias)"
# SAT's AdaLN linear gives 12 chunks: [shift, scale, gate] x [msa, mlp] for image, then the same for text.
# diffusers' norm1 takes (shift, scale, gate) of msa for image then text, norm2 the same of mlp.
NORM1_CHUNKS, NORM2_CHUNKS = (0, 1, 2, 6, 7, 8), (3, 4, 5, 9, 10, 11)


@dataclass
class KeyMapReport:
    """What became of every SAT key (keys without ENGINE_PREFIX)."""

    renamed: dict[str, str] = field(default_factory=dict)  # SAT key -> our key
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)  # SAT key -> our keys
    merged: dict[str, str] = field(default_factory=dict)  # LoRA key -> the SAT weight it was merged into
    dropped: dict[str, str] = field(default_factory=dict)  # SAT key -> why
    lora_rank: int | None = None

    def summary(self) -> str:
        return (f"{len(self.renamed)} renamed, {len(self.split)} split, {len(self.merged)} LoRA tensors merged "
                f"(rank {self.lora_rank}), {len(self.dropped)} dropped")


def unwrap_engine(raw: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The network's tensors of a SAT `module` dict, ENGINE_PREFIX removed, and the other parts dropped."""
    network, dropped = {}, {}
    for key, tensor in raw.items():
        if key.startswith(ENGINE_PREFIX):
            network[key[len(ENGINE_PREFIX):]] = tensor
        elif key.startswith(OTHER_PARTS):
            dropped[key] = "text encoder or VAE: loaded from text/ and vae/"
        else:
            raise CheckpointError(f"SAT checkpoint key {key!r} is neither the network ({ENGINE_PREFIX}...) nor "
                                  f"one of {OTHER_PARTS}: not a STAR checkpoint this map knows")
    if not network:
        raise CheckpointError(f"no {ENGINE_PREFIX}* tensors: not a SAT diffusion engine checkpoint")
    return network, dropped


def position_of(sat: Mapping[str, Tensor]) -> Position:
    """Which positions the SAT network uses, from its keys: RoPE buffers (5B) or a sin-cos table (2B)."""
    if "mixins.pos_embed.freqs_cos" in sat:
        return "rope"
    if "mixins.pos_embed.pos_embedding" in sat:
        return "sincos"
    raise CheckpointError("the SAT checkpoint has neither mixins.pos_embed.freqs_cos (RoPE, 5B) nor "
                          "mixins.pos_embed.pos_embedding (sin-cos, 2B): cannot tell its position embedding")


def _merged(weight: Tensor, pairs: list[tuple[Tensor, Tensor]], rank: int) -> Tensor:
    """SAT `merge_linear_lora`: W + cat_j(B_j @ A_j) / r along the output rows (lora_alpha 1, so the
    scaling is 1/r), in float32, then back to W's dtype."""
    delta = torch.cat([b.float() @ a.float() for a, b in pairs], dim=0) / rank
    if delta.shape != weight.shape:
        raise CheckpointError(f"LoRA delta {tuple(delta.shape)} does not fit the weight {tuple(weight.shape)}")
    return (weight.float() + delta).to(weight.dtype)


def sat_to_ours(sat: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], KeyMapReport]:
    """Our layout from the SAT network's tensors (keys without ENGINE_PREFIX); CheckpointError on any key
    no rule covers, and on a LoRA group with a piece missing."""
    report, ours = KeyMapReport(), {}
    lora: dict[tuple[str, str], dict[tuple[str, int], Tensor]] = {}  # (layer, module) -> {(A|B, j): tensor}
    unknown = []
    for key, tensor in sat.items():
        if match := re.fullmatch(LORA, key):
            layer, module, side, j = match.groups()
            lora.setdefault((layer, module), {})[(side, int(j))] = tensor
            continue
        if reason := next((why for pattern, why in DROPPED if re.fullmatch(pattern, key)), None):
            report.dropped[key] = reason
            continue
        rule = next(((p, r) for p, r in RENAMES if re.fullmatch(p, key)), None)
        if rule is not None:
            ours[re.sub(rule[0], rule[1], key)] = tensor
            report.renamed[key] = re.sub(rule[0], rule[1], key)
        elif not re.fullmatch(f"{QKV}|{DENSE}|{ADALN}", key):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} SAT keys match no rule of the key map, e.g. {unknown[:5]}")
    for key, tensor in sat.items():
        if match := re.fullmatch(ADALN, key):
            layer, kind = match.groups()
            chunks = tensor.chunk(12, dim=0)
            targets = tuple(f"transformer_blocks.{layer}.{norm}.linear.{kind}" for norm in ("norm1", "norm2"))
            for target, picks in zip(targets, (NORM1_CHUNKS, NORM2_CHUNKS)):
                ours[target] = torch.cat([chunks[i] for i in picks], dim=0)
            report.split[key] = targets
        elif match := re.fullmatch(QKV, key):
            layer, kind = match.groups()
            full = _lora_merged(key, tensor, lora.pop((layer, "query_key_value"), None), 3, report) \
                if kind == "weight" else tensor
            targets = tuple(f"transformer_blocks.{layer}.attn1.to_{x}.{kind}" for x in "qkv")
            for target, part in zip(targets, full.chunk(3, dim=0)):
                ours[target] = part
            report.split[key] = targets
        elif match := re.fullmatch(DENSE, key):
            layer, kind = match.groups()
            target = f"transformer_blocks.{layer}.attn1.to_out.0.{kind}"
            ours[target] = _lora_merged(key, tensor, lora.pop((layer, "dense"), None), 1, report) \
                if kind == "weight" else tensor
            report.renamed[key] = target
    if lora:
        raise CheckpointError(f"LoRA tensors without the weight they adapt: layers/modules {sorted(lora)[:5]}")
    return ours, report


def _lora_merged(key: str, weight: Tensor, group: dict[tuple[str, int], Tensor] | None, parts: int,
                 report: KeyMapReport) -> Tensor:
    """`weight` with its LoRA merged: SAT's qkv has one A/B pair per q, k, v (parts 3), dense one pair.
    A checkpoint of plain weights (`...query_key_value.weight`, no `original.`) is accepted as SAT's
    LoraLinear accepts it, with no LoRA; an `original.` weight without its pairs is an error."""
    plain = ".original." not in key
    if group is None:
        if plain:
            return weight
        raise CheckpointError(f"{key}: a LoRA base weight without its matrix_A/matrix_B")
    if plain:
        raise CheckpointError(f"{key}: LoRA matrices beside a plain weight "
                              f"(expected {key.replace('.weight', '.original.weight')})")
    wanted = {(side, j) for side in "AB" for j in range(parts)}
    if set(group) != wanted:
        raise CheckpointError(f"{key}: LoRA pieces {sorted(group)} differ from {sorted(wanted)}")
    rank = group[("A", 0)].shape[0]
    if report.lora_rank not in (None, rank):
        raise CheckpointError(f"{key}: LoRA rank {rank} differs from {report.lora_rank} elsewhere")
    report.lora_rank = rank
    prefix = key.rsplit(".original.", 1)[0]
    for side, j in sorted(group):
        report.merged[f"{prefix}.matrix_{side}.{j}"] = key
    return _merged(weight, [(group[("A", j)], group[("B", j)]) for j in range(parts)], rank)
