"""Spatial tiles over a latent (H, W) and their feathered blend, for canvases too large to denoise at once
(the official has no spatial tiling; users ask for it, official issue #38)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from star_model.diffusion import Denoiser
from star_model.padding import latent_size_ok
from star_model.latent_windows import Ramp, blend_weights, plan_spans
from star_model.transfer import to_device

Tile = tuple[int, int, int, int]  # latent rows [y0, y1), columns [x0, x1)
# (x_t of one tile (B, C, F, h, w), t (B,), the tile) -> x̂0 of the tile.
TileDenoiser = Callable[[Tensor, Tensor, Tile], Tensor]


def plan_tiles(height: int, width: int, tile_height: int, tile_width: int, overlap: int,
               num_downsamples: int | None = None) -> list[Tile]:
    """A row-major grid of tiles covering (height, width): tiles are tile-sized (or the whole axis when it
    is smaller), overlap by at least `overlap` latent pixels, and are spread evenly (`plan_spans`).

    With `num_downsamples`, every tile size must pass `latent_size_ok` (the network's size rule).
    """
    rows = plan_spans(height, tile_height, overlap)
    cols = plan_spans(width, tile_width, overlap)
    if num_downsamples is not None:
        h, w = rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]
        if not latent_size_ok(h, w, num_downsamples):
            raise ValueError(f"tile {h}x{w} does not fit a network with {num_downsamples} downsamples; "
                             f"use sizes with H ≡ 2 and W ≡ 0 (mod {2**num_downsamples})")
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols]


def tile_weights(tiles: Sequence[Tile], height: int, width: int, ramp: Ramp = "linear") -> list[Tensor]:
    """Feathered weights of each tile over its own extent, (y1-y0, x1-x0) float32, summing to 1 per
    pixel over all tiles: the outer product of the row and column `blend_weights` of the grid.

    A lone tile gets exactly 1 everywhere, so untiled blending is the identity. Only tile-sized
    tensors are made, so the weights of a 4K frame's grid cost no more than one frame.
    """
    rows = sorted({(y0, y1) for y0, y1, _, _ in tiles})
    cols = sorted({(x0, x1) for _, _, x0, x1 in tiles})
    if len(tiles) != len(rows) * len(cols):
        raise ValueError("tiles must form a full grid (use plan_tiles)")
    row_w = blend_weights(rows, height, ramp)  # (n_rows, H)
    col_w = blend_weights(cols, width, ramp)  # (n_cols, W)
    return [row_w[rows.index((y0, y1)), y0:y1, None] * col_w[cols.index((x0, x1)), None, x0:x1]
            for y0, y1, x0, x1 in tiles]


def scale_tiles(tiles: Sequence[Tile], factor: int) -> list[Tile]:
    """The same tiles in units `factor` times finer (latent tiles -> pixel tiles)."""
    return [(y0 * factor, y1 * factor, x0 * factor, x1 * factor) for y0, y1, x0, x1 in tiles]


def merge_tiles(outputs: Sequence[Tensor], tiles: Sequence[Tile], height: int, width: int,
                ramp: Ramp = "linear") -> Tensor:
    """Blends per-tile tensors (..., h, w) into (..., H, W) with `tile_weights`, in float32."""
    first = outputs[0]
    merged = first.new_zeros(*first.shape[:-2], height, width, dtype=torch.float32)
    for out, (y0, y1, x0, x1), w in zip(outputs, tiles, tile_weights(tiles, height, width, ramp)):
        merged[..., y0:y1, x0:x1] += out.float() * to_device(w, out.device)
    return merged


def tiled_denoiser(denoise_tile: TileDenoiser, tiles: Sequence[Tile], ramp: Ramp = "linear") -> Denoiser:
    """A `Denoiser` that denoises each tile separately and blends the x̂0 at every solver step."""

    def denoise(xt: Tensor, t: Tensor) -> Tensor:
        height, width = xt.shape[-2:]
        outputs = [denoise_tile(xt[..., y0:y1, x0:x1], t, (y0, y1, x0, x1)) for y0, y1, x0, x1 in tiles]
        return merge_tiles(outputs, tiles, height, width, ramp)

    return denoise
