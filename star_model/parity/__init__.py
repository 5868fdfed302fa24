"""Checks of our implementation against fixtures recorded by running the official STAR code.

`python jobs/parity.py DIR` runs every check whose fixture files are present in DIR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Check:
    """One compared fixture: the largest absolute difference and the bound it must stay under."""

    name: str
    max_abs_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        return f"{verdict:4s} {self.name:40s} max_abs_err={self.max_abs_error:.3e} (tol {self.tolerance:.0e})"


def compare(name: str, ours: torch.Tensor, official: torch.Tensor, tolerance: float) -> Check:
    """Max absolute error of `ours` against `official`; a shape mismatch is an infinite error."""
    if tuple(ours.shape) != tuple(official.shape):
        raise ValueError(f"{name}: shape {tuple(ours.shape)} differs from the fixture's {tuple(official.shape)}")
    diff = (ours.detach().double().cpu() - official.double()).abs()
    return Check(name, float(diff.max()) if diff.numel() else 0.0, tolerance)


def compare_scaled(name: str, ours: torch.Tensor, official: torch.Tensor, tolerance: float) -> Check:
    """`compare` with each entry's error divided by max(1, |official|): for values far from unit scale
    (0..255 images, FFT magnitudes, k-sigmas near 1e3), whose last float32 bit alone is worth more than a
    unit-scale bound and varies with the machine's libm and FFT summation order."""
    if tuple(ours.shape) != tuple(official.shape):
        raise ValueError(f"{name}: shape {tuple(ours.shape)} differs from the fixture's {tuple(official.shape)}")
    reference = official.double()
    diff = (ours.detach().double().cpu() - reference).abs() / reference.abs().clamp(min=1.0)
    return Check(name, float(diff.max()) if diff.numel() else 0.0, tolerance)
