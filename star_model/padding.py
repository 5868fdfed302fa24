"""Spatial padding: the official canvas rule (>= 720x1280) and ours, only what the network's
down/up-sampling needs; `latent_size_ok` is the UNet's size rule both are checked against."""

from __future__ import annotations


def official_pad_to_fit(height: int, width: int) -> tuple[int, int, int, int]:
    """The official canvas padding (w1, w2, h1, h2) in pixels; the official pads with value +1 (white).

    H < 720: centred to 720; H > 720: at the bottom to ⌊(H+48)/64⌋·64 + 16 (≡ 16 mod 64).
    W < 1280: centred to 1280; W > 1280: at the right to ⌊W/64⌋·64 + 64 (adds 64 even if W ≡ 0 mod 64).
    For an odd centred difference the extra pixel goes after (bottom/right) [inferred; the fixtures
    only have even differences].
    """

    def side(size: int, canvas: int, target_above: int) -> tuple[int, int]:
        if size < canvas:
            before = (canvas - size) // 2
            return before, canvas - size - before
        if size == canvas:
            return 0, 0
        return 0, target_above - size

    w1, w2 = side(width, 1280, width // 64 * 64 + 64)
    h1, h2 = side(height, 720, (height + 48) // 64 * 64 + 16)
    return w1, w2, h1, h2


def _downsample_size(h: int, w: int) -> tuple[int, int]:
    """The official Downsample: stride-2 3x3 conv with padding 2 rows, 1 column."""
    return (h + 4 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1


def _upsample_size(h: int, w: int) -> tuple[int, int]:
    """The official Upsample: nearest x2, then the first and last row are dropped."""
    return 2 * h - 2, 2 * w


def latent_size_ok(height: int, width: int, num_downsamples: int) -> bool:
    """Whether a latent of (height, width) round-trips through `num_downsamples` Downsample/Upsample
    pairs with equal sizes at every skip concatenation (the UNet's condition).

    Works out to H ≡ 2 (mod 2^k) and W ≡ 0 (mod 2^k) for k >= 1 downsamples.
    """
    h, w = height, width
    for _ in range(num_downsamples):
        if h < 1 or w < 1:
            return False
        down_h, down_w = _downsample_size(h, w)
        if _upsample_size(down_h, down_w) != (h, w):
            return False
        h, w = down_h, down_w
    return True


def min_padded_latent(height: int, width: int, num_downsamples: int) -> tuple[int, int]:
    """The smallest latent (H', W') >= (height, width) with `latent_size_ok`: H' ≡ 2, W' ≡ 0 mod 2^k."""
    if height < 1 or width < 1:
        raise ValueError(f"latent size must be positive, got {height}x{width}")
    if num_downsamples == 0:
        return height, width
    m = 2**num_downsamples
    padded_h = height + (2 - height) % m  # 2 is a valid height for every k (2 -> 2 -> 2 ...)
    padded_w = width + (-width) % m
    assert latent_size_ok(padded_h, padded_w, num_downsamples)
    return padded_h, padded_w


def minimal_pad(height: int, width: int, num_downsamples: int, vae_scale: int = 8) -> tuple[int, int, int, int]:
    """Our pixel padding (w1, w2, h1, h2), at the bottom and right only: the least that makes the latent
    (⌈H/8⌉, ⌈W/8⌉) padded to `min_padded_latent` fit the network.

    Differs from the official on purpose: the official pads every clip to at least 720x1280 (2.8x the
    work for a 480p clip x4); the network needs only the size rule, not a minimum canvas.
    """
    lat_h, lat_w = min_padded_latent(-(-height // vae_scale), -(-width // vae_scale), num_downsamples)
    return 0, lat_w * vae_scale - width, 0, lat_h * vae_scale - height
