"""Temporal windows of the sampler (the official chunking rule and ours) as spans of latent frames, the
one blend ramp, and merging per-window x̂0 back into one clip; `plan_spans` also lays out tile rows and
columns (star_model/tiles.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from star_model.diffusion import Denoiser
from star_model.transfer import to_device

Span = tuple[int, int]  # [start, stop) along one axis: latent frames of a window, or rows/columns of a tile
MergeMode = Literal["weighted", "hard_cut"]
Ramp = Literal["linear", "cosine"]
# (x_t of one window (B, C, f, H, W), t (B,), the window's frames) -> x̂0 of the window.
LatentWindowDenoiser = Callable[[Tensor, Tensor, slice], Tensor]


# ---------------------------------------------------------------------------------------------------
# Windows


def official_overlap(max_chunk_len: int) -> int:
    """The overlap the official `make_chunks` computes (interp_f_num 0, chunk_overlap_ratio 0.5):
    int((L·0.5 - 1)//1 + 1) = L//2 for every L >= 1, so the stride L - L//2 is L/2 rounded up."""
    return int((max_chunk_len * 0.5 - 1) // 1 + 1)


def official_chunks(num_frames: int, max_chunk_len: int) -> list[Span]:
    """The official `make_chunks(F, 0, max_chunk_len)` (its `sliding_windows_1d`): windows of L frames
    with stride L - `official_overlap(L)`; a window that would end within 1.25·L of the end is
    extended to the end.

    The official only chunks when F > L. For L < F <= 1.25·L this returns a single window and the
    official merge then fails (see `official_merge_fails`).
    """
    if num_frames < 1 or max_chunk_len < 1:
        raise ValueError(f"need num_frames >= 1 and max_chunk_len >= 1, got {num_frames}, {max_chunk_len}")
    stride = max_chunk_len - official_overlap(max_chunk_len)
    windows: list[Span] = []
    start = 0
    while start + 1.25 * max_chunk_len < num_frames:
        windows.append((start, start + max_chunk_len))
        start += stride
    windows.append((start, num_frames))
    return windows


def official_merge_fails(num_frames: int, max_chunk_len: int) -> bool:
    """True where the official sampler raises IndexError: it chunks (F > L) but `make_chunks` gives one
    window, and the hard-cut merge reads the overlap from a second window that does not exist. At the
    default L = 32 that is every clip of 33 to 40 frames. Our `hard_cut_keeps` keeps the single window
    whole instead."""
    return num_frames > max_chunk_len and len(official_chunks(num_frames, max_chunk_len)) == 1


def plan_spans(num_frames: int, length: int, overlap: int) -> list[Span]:
    """Our windows for any F >= 1: all `length` long (one window of F frames if F <= length), consecutive
    windows overlap by at least `overlap`, the first starts at 0 and the last ends at F; starts are spread
    evenly (n = ceil((F - O)/(L - O)) windows), so no window is a sliver next to its neighbour.

    Differs from the official on purpose: every window has the length the network was sized for, and no
    frame count makes the merge fail.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= overlap < length:
        raise ValueError(f"need 0 <= overlap < length, got overlap={overlap}, length={length}")
    if num_frames <= length:
        return [(0, num_frames)]
    count = math.ceil((num_frames - overlap) / (length - overlap))
    span = num_frames - length  # the last window starts here
    starts = [round(k * span / (count - 1)) for k in range(count)]
    return [(s, s + length) for s in starts]


def _check_spans(windows: Sequence[Span], num_frames: int) -> None:
    if not windows or windows[0][0] != 0 or windows[-1][1] != num_frames:
        raise ValueError(f"windows {list(windows)} must start at 0 and end at {num_frames}")
    for (a0, a1), (b0, b1) in zip(windows, windows[1:]):
        if not (a0 < b0 <= a1 < b1):
            raise ValueError(f"windows {(a0, a1)} and {(b0, b1)} must be increasing and overlap or touch")


# ---------------------------------------------------------------------------------------------------
# Merging


def hard_cut_keeps(windows: Sequence[Span]) -> list[Span]:
    """The frames each window keeps (absolute [start, stop)) when cutting at the middle of each overlap.

    Cut between windows k and k+1 at start_{k+1} + (stop_k - start_{k+1})//2. For the official equal
    overlaps O this is the official rule (README §3): first keeps [0, len-O+O//2), middle ones
    [O//2, len-O+O//2), the last [O//2, len), in window-local frames. A single window keeps all frames
    (the official raises IndexError there).
    """
    cuts = [b0 + (a1 - b0) // 2 for (_, a1), (b0, _) in zip(windows, windows[1:])]
    bounds = [windows[0][0], *cuts, windows[-1][1]]
    return list(zip(bounds[:-1], bounds[1:]))


def blend_ramp(n: int, kind: Ramp = "linear") -> Tensor:
    """Weights rising over an overlap of n frames, (n,) float64: w_j for j = 1..n, with w_j + w_{n+1-j} = 1,
    all > 0, so both sides count at every shared frame. The one ramp of every blend: latent windows and
    tiles here, restored segments in the restore job's assembly."""
    x = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
    return x if kind == "linear" else 0.5 - 0.5 * torch.cos(math.pi * x)


def blend_weights(windows: Sequence[Span], num_frames: int, ramp: Ramp = "linear") -> Tensor:
    """Per-window per-frame weights (n_windows, F), float32, zero outside each window and summing to 1
    over windows at every frame: each window ramps up across its overlap with the previous window and
    down across its overlap with the next, then the weights are normalised per frame."""
    _check_spans(windows, num_frames)
    weights = torch.zeros(len(windows), num_frames, dtype=torch.float64)
    for k, (start, stop) in enumerate(windows):
        w = torch.ones(stop - start, dtype=torch.float64)
        if k > 0:
            n_in = windows[k - 1][1] - start  # overlap with the previous window
            w[:n_in] = torch.minimum(w[:n_in], blend_ramp(n_in, ramp))
        if k + 1 < len(windows):
            n_out = stop - windows[k + 1][0]  # overlap with the next window
            if n_out > 0:
                w[stop - start - n_out :] = torch.minimum(w[stop - start - n_out :], blend_ramp(n_out, ramp).flip(0))
        weights[k, start:stop] = w
    # Normalising covers frames where three windows overlap (possible when overlap > length/2).
    return (weights / weights.sum(0, keepdim=True)).to(torch.float32)


def merge_latent_windows(
    outputs: Sequence[Tensor],
    windows: Sequence[Span],
    mode: MergeMode = "weighted",
    ramp: Ramp = "linear",
) -> Tensor:
    """Joins per-window tensors (B, C, f_k, H, W) into (B, C, F, H, W) along frames (dim 2).

    "weighted" (ours, default): the `blend_weights` average, no seam at a single frame.
    "hard_cut" (official): each window contributes only its `hard_cut_keeps` frames.
    """
    num_frames = windows[-1][1]
    _check_spans(windows, num_frames)
    if mode == "hard_cut":
        keeps = hard_cut_keeps(windows)
        parts = [
            out[:, :, keep0 - start : keep1 - start]  # (B, C, kept frames, H, W)
            for out, (start, _), (keep0, keep1) in zip(outputs, windows, keeps)
        ]
        return torch.cat(parts, dim=2)  # (B, C, F, H, W)
    if mode != "weighted":
        raise ValueError(f"unknown merge mode {mode!r}; expected 'weighted' or 'hard_cut'")
    weights = to_device(blend_weights(windows, num_frames, ramp), outputs[0].device)  # (n, F)
    first = outputs[0]
    merged = first.new_zeros(first.shape[0], first.shape[1], num_frames, *first.shape[3:], dtype=torch.float32)
    for out, (start, stop), w in zip(outputs, windows, weights):
        merged[:, :, start:stop] += out.float() * w[start:stop].view(1, 1, -1, 1, 1)
    return merged


def latent_window_denoiser(
    denoise_latent_window: LatentWindowDenoiser,
    windows: Sequence[Span],
    mode: MergeMode = "weighted",
    ramp: Ramp = "linear",
) -> Denoiser:
    """A `Denoiser` that denoises each window separately and merges the x̂0, at every solver step, as
    the official chunked sampler does (it slices the latent and the hint per window)."""

    def denoise(xt: Tensor, t: Tensor) -> Tensor:
        outputs = [denoise_latent_window(xt[:, :, start:stop], t, slice(start, stop)) for start, stop in windows]
        return merge_latent_windows(outputs, windows, mode, ramp)

    return denoise
