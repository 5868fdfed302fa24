"""Parity of the denoiser forward: the tiny-config fixture (`tiny_*`) and, where present, the
full-size official fixture (`full_*`, weights regenerated from `full_weights_rule.json`)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from star_model.blocks import frames_last
from star_model.checkpoint import load_checkpoint
from star_model.denoiser_config import OFFICIAL, DenoiserConfig
from star_model.parity import Check, compare
from star_model.unet import StarDenoiser

FORWARD_TOLERANCE = 2e-5
# Control-branch residuals are intermediates with magnitudes up to ~20, where float32 rounding alone
# differs by ~1e-5 between thread counts; their bound scales with the fixture's magnitude.
INTERMEDIATE_RELATIVE_TOLERANCE = 2e-6
# The fixture's float64 weight checksums vary with summation order (README: abs tol ~1e-9 per unit).
CHECKSUM_RELATIVE_TOLERANCE = 1e-9


def fixture_config(folder: Path, key: str = "constructor_kwargs") -> DenoiserConfig:
    """The config the fixture was made with, from the official constructor values in tiny_config.json."""
    meta = json.loads((folder / "tiny_config.json").read_text())
    return DenoiserConfig.from_official_kwargs(meta[key])


def build_fixture_denoiser(folder: Path) -> StarDenoiser:
    """The tiny fixture network, loaded strictly from `tiny_state_dict.safetensors`, in eval mode."""
    model = StarDenoiser(fixture_config(folder)).eval()
    load_checkpoint(model, folder / "tiny_state_dict.safetensors", strict=True,
                    what=f"the parity fixture's weights in {folder}")
    return model


def _forward_checks(prefix: str, model: StarDenoiser, inputs: dict[str, torch.Tensor],
                    outputs: dict[str, torch.Tensor]) -> list[Check]:
    x, t, y, hint = inputs["x"], inputs["t"], inputs["y"], inputs["hint"]
    with torch.no_grad():
        checks = [compare(f"{prefix}.output", model(x, t, y, hint=hint), outputs["output"], FORWARD_TOLERANCE)]
        names = sorted(k for k in outputs if k.startswith("control."))
        if names:
            frames = x.shape[2]
            residuals = model.VideoControlNet(frames_last(x), t, y.repeat_interleave(frames, dim=0),
                                              frames_last(hint), frames)
            if len(residuals) != len(names):
                raise ValueError(f"{prefix}: the control branch returns {len(residuals)} residuals, "
                                 f"the fixture holds {len(names)}")
            for name, ours in zip(names, residuals):
                ref = outputs[name]
                bound = INTERMEDIATE_RELATIVE_TOLERANCE * max(1.0, float(ref.abs().max()))
                checks.append(compare(f"{prefix}.{name}", ours, ref, bound))
    return checks


def tiny_checks(folder: Path) -> list[Check]:
    model = build_fixture_denoiser(folder)
    return _forward_checks("tiny", model, load_file(folder / "tiny_inputs.safetensors"),
                           load_file(folder / "tiny_outputs.safetensors"))


def _rule_tensor(key: str, shape: torch.Size, kind: str, base_seed: int) -> torch.Tensor:
    """Regenerate one full-size weight by the fixture's rule (parity README section 5)."""
    gen = torch.Generator().manual_seed((zlib.crc32(key.encode("utf-8")) + base_seed) % 2**63)
    r = torch.randn(shape, generator=gen)
    if kind == "fan_in":
        return r / math.sqrt(math.prod(shape[1:]))
    if kind == "norm_weight":
        return 1.0 + 0.1 * r
    if kind == "small":
        return 0.1 * r
    raise ValueError(f"unknown init kind {kind!r} in full_weights_rule.json")


def build_rule_denoiser(folder: Path) -> tuple[StarDenoiser, float]:
    """The full-size network with weights regenerated in place (about 8.2 GB for the official config).

    Returns the model and the worst relative error of the regenerated weights' float64 checksums.
    """
    rule = json.loads((folder / "full_weights_rule.json").read_text())
    config_file = folder / "tiny_config.json"
    cfg = fixture_config(folder, "official_defaults") if config_file.exists() else OFFICIAL
    with torch.device("meta"):
        model = StarDenoiser(cfg)
    model = model.to_empty(device="cpu").eval()
    params = model.state_dict()
    keys = [row[0] for row in rule["tensors"]]
    if set(keys) != set(params):
        missing, extra = sorted(set(params) - set(keys)), sorted(set(keys) - set(params))
        raise ValueError(f"full_weights_rule.json does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    worst = 0.0
    with torch.no_grad():
        for key, kind, checksum, first in rule["tensors"]:
            tensor = _rule_tensor(key, params[key].shape, kind, rule["base_seed"])
            worst = max(worst, abs(tensor.double().sum().item() - checksum) / max(1.0, abs(checksum)),
                        abs(tensor.flatten()[0].item() - first))
            params[key].copy_(tensor)
    return model, worst


def full_checks(folder: Path) -> list[Check]:
    model, checksum_error = build_rule_denoiser(folder)
    checks = [Check("full.weights_rule_checksums", checksum_error, CHECKSUM_RELATIVE_TOLERANCE)]
    checks += _forward_checks("full", model, load_file(folder / "full_inputs.safetensors"),
                              load_file(folder / "full_outputs.safetensors"))
    return checks


def checks(folder: Path) -> list[Check]:
    """Every denoiser check whose fixture files are in `folder`."""
    found: list[Check] = []
    if all((folder / f).exists() for f in ("tiny_config.json", "tiny_state_dict.safetensors",
                                           "tiny_inputs.safetensors", "tiny_outputs.safetensors")):
        found += tiny_checks(folder)
    if all((folder / f).exists() for f in ("full_weights_rule.json", "full_inputs.safetensors",
                                           "full_outputs.safetensors")):
        found += full_checks(folder)
    return found
