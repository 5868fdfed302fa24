"""Temporal windows (official rule and ours), their merges, the padding rules and spatial tiles."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import parity
from star_model.padding import latent_size_ok, min_padded_latent, minimal_pad, official_pad_to_fit
from star_model.tiles import merge_tiles, plan_tiles, tile_weights, tiled_denoiser
from star_model.latent_windows import (blend_weights, hard_cut_keeps, latent_window_denoiser, merge_latent_windows,
                                       official_chunks, official_merge_fails, official_overlap, plan_spans)


def test_official_chunks_match_make_chunks() -> None:
    cases = json.loads(parity("helpers.json").read_text())["make_chunks"]
    assert len(cases) > 100
    for key, windows in cases.items():
        frames, max_len = (int(v) for v in key[1:].split("_max"))
        assert official_chunks(frames, max_len) == [tuple(w) for w in windows], key


# make_chunks(F, 0, L) worked by hand from the official sliding_windows_1d: overlap int((L/2 - 1)//1 + 1),
# stride L - overlap, a window within 1.25·L of the end runs to the end. The fixture has even L only.
@pytest.mark.parametrize("frames,max_len,windows", [
    (4, 1, [(0, 1), (1, 2), (2, 3), (3, 4)]),  # overlap 0, stride 1
    (10, 3, [(0, 3), (2, 5), (4, 7), (6, 9), (8, 10)]),  # overlap 1, stride 2
    (12, 5, [(0, 5), (3, 8), (6, 12)]),  # overlap 2, stride 3 (not 2)
    (20, 7, [(0, 7), (4, 11), (8, 15), (12, 20)]),  # overlap 3, stride 4
    (100, 33, [(0, 33), (17, 50), (34, 67), (51, 84), (68, 100)]),  # overlap 16, stride 17
    (72, 32, [(0, 32), (16, 48), (32, 72)]),
])
def test_official_chunks_for_odd_and_even_lengths(frames: int, max_len: int, windows: list) -> None:
    assert official_chunks(frames, max_len) == windows


def test_official_stride_is_length_minus_official_overlap() -> None:
    assert [official_overlap(n) for n in (1, 2, 3, 4, 5, 7, 9, 31, 32, 33)] == [0, 1, 1, 2, 2, 3, 4, 15, 16, 16]
    for max_len in range(1, 41):
        stride = max_len - official_overlap(max_len)
        for frames in range(1, 130):
            windows = official_chunks(frames, max_len)
            assert windows[0][0] == 0 and windows[-1][1] == frames
            assert all(b0 - a0 == stride for (a0, _), (b0, _) in zip(windows, windows[1:])), (frames, max_len)
            assert all(stop - start == max_len for start, stop in windows[:-1])
            last = windows[-1][1] - windows[-1][0]
            assert last <= 1.25 * max_len or len(windows) == 1 and frames <= 1.25 * max_len


def test_official_pad_to_fit_matches() -> None:
    cases = json.loads(parity("helpers.json").read_text())["pad_to_fit"]
    for key, pad in cases.items():
        height, width = (int(v) for v in key.split("x"))
        assert list(official_pad_to_fit(height, width)) == pad, key


def test_official_hard_cut_example() -> None:
    # star_official.md §4.2 step 10: 72 frames -> windows (0,32), (16,48), (32,72), kept [0:24] [24:40] [40:72].
    windows = official_chunks(72, 32)
    assert windows == [(0, 32), (16, 48), (32, 72)]
    assert hard_cut_keeps(windows) == [(0, 24), (24, 40), (40, 72)]


def test_official_merge_failure_range() -> None:
    failing = [f for f in range(1, 200) if official_merge_fails(f, 32)]
    assert failing == list(range(33, 41))
    # Our hard cut keeps a single window whole instead of raising.
    assert hard_cut_keeps(official_chunks(36, 32)) == [(0, 36)]


@pytest.mark.parametrize("length,overlap", [(32, 16), (32, 8), (16, 12), (8, 0), (5, 2), (4, 3)])
def test_plan_windows_covers_every_frame_count(length: int, overlap: int) -> None:
    for frames in range(1, 150):
        windows = plan_spans(frames, length, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == frames
        assert all(stop - start == min(length, frames) for start, stop in windows)
        for (a0, a1), (b0, b1) in zip(windows, windows[1:]):
            assert a0 < b0 and a1 - b0 >= overlap
        weights = blend_weights(windows, frames)
        torch.testing.assert_close(weights.sum(0), torch.ones(frames))
        assert bool((weights >= 0).all())
        for k, (start, stop) in enumerate(windows):
            assert float(weights[k, :start].abs().sum() + weights[k, stop:].abs().sum()) == 0.0
        keeps = hard_cut_keeps(windows)
        assert keeps[0][0] == 0 and keeps[-1][1] == frames
        assert all(k0 < k1 and w0 <= k0 and k1 <= w1 for (k0, k1), (w0, w1) in zip(keeps, windows))
        assert all(a[1] == b[0] for a, b in zip(keeps, keeps[1:]))


def test_plan_windows_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="overlap"):
        plan_spans(10, 4, 4)
    with pytest.raises(ValueError, match="num_frames"):
        plan_spans(0, 4, 2)


@pytest.mark.parametrize("ramp", ["linear", "cosine"])
def test_ramps_cross_fade(ramp: str) -> None:
    weights = blend_weights([(0, 8), (4, 12)], 12, ramp)  # type: ignore[arg-type]
    assert weights[0, :4].tolist() == [1.0] * 4 and weights[1, 8:].tolist() == [1.0] * 4
    assert bool((weights[0, 4:8].diff() < 0).all())  # fades out across the overlap
    torch.testing.assert_close(weights[0, 4:8], weights[1, 4:8].flip(0))


@pytest.mark.parametrize("mode", ["weighted", "hard_cut"])
def test_merge_of_consistent_windows_is_the_clip(mode: str) -> None:
    clip = torch.randn(2, 4, 45, 3, 5)
    for windows in (plan_spans(45, 16, 6), official_chunks(45, 16), [(0, 45)]):
        parts = [clip[:, :, a:b] for a, b in windows]
        torch.testing.assert_close(merge_latent_windows(parts, windows, mode), clip)  # type: ignore[arg-type]


def test_hard_cut_takes_each_frame_from_one_window() -> None:
    windows = official_chunks(10, 4)  # (0,4) (2,6) (4,8) (6,10)
    parts = [torch.full((1, 1, b - a, 1, 1), float(k)) for k, (a, b) in enumerate(windows)]
    merged = merge_latent_windows(parts, windows, "hard_cut").flatten().tolist()
    assert merged == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_windowed_denoiser_passes_frame_slices() -> None:
    seen: list[slice] = []

    def denoise_latent_window(xt: torch.Tensor, t: torch.Tensor, frames: slice) -> torch.Tensor:
        seen.append(frames)
        assert xt.shape[2] == frames.stop - frames.start
        return xt * 2

    xt = torch.randn(1, 4, 20, 2, 2)
    windows = plan_spans(20, 8, 4)
    out = latent_window_denoiser(denoise_latent_window, windows)(xt, torch.tensor([899]))
    torch.testing.assert_close(out, xt * 2)
    assert [(s.start, s.stop) for s in seen] == windows


def simulate_unet_sizes(height: int, width: int, num_downsamples: int) -> bool:
    """The UNet's size arithmetic step by step: every skip concat needs the upsampled size to equal the
    encoder size at that level (Downsample: 3x3 stride 2, pad 2 rows 1 column; Upsample: x2, drop 2 rows)."""
    encoder = [(height, width)]
    for _ in range(num_downsamples):
        h, w = encoder[-1]
        encoder.append(((h + 4 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1))
    h, w = encoder[-1]
    for level in range(num_downsamples - 1, -1, -1):
        h, w = 2 * h - 2, 2 * w
        if (h, w) != encoder[level]:
            return False
    return True


@pytest.mark.parametrize("num_downsamples", [0, 1, 2, 3, 4])
def test_latent_size_rule_matches_simulation(num_downsamples: int) -> None:
    m = 2**num_downsamples
    for h in range(1, 70):
        for w in range(1, 70):
            ok = simulate_unet_sizes(h, w, num_downsamples)
            assert latent_size_ok(h, w, num_downsamples) == ok, (h, w)
            if num_downsamples:
                assert ok == (h % m == 2 % m and w % m == 0), (h, w)
            padded = min_padded_latent(h, w, num_downsamples)
            assert simulate_unet_sizes(*padded, num_downsamples)
            # Minimal: no smaller size >= (h, w) in either axis passes.
            assert not any(simulate_unet_sizes(hh, padded[1], num_downsamples) for hh in range(h, padded[0]))
            assert not any(simulate_unet_sizes(padded[0], ww, num_downsamples) for ww in range(w, padded[1]))


def test_readme_size_examples() -> None:
    assert latent_size_ok(10, 12, 2) and not latent_size_ok(12, 12, 2)  # tiny fixture: 10->6->4, 12->6->3
    assert latent_size_ok(10, 8, 3)  # the full-config fixture
    assert latent_size_ok(90, 160, 3) and latent_size_ok(122, 216, 3)  # official 720p and toy canvases
    assert not latent_size_ok(92, 160, 3) and not latent_size_ok(90, 164, 3)


def test_minimal_pad_is_smaller_than_official_canvas() -> None:
    # Toy example 240x426 x4 = 960x1704: the official pads to 976x1728; ours needs the same here...
    assert minimal_pad(960, 1704, 3) == (0, 24, 0, 16)
    # ...but a 480p x2 clip is not blown up to 720x1280.
    w1, w2, h1, h2 = minimal_pad(960, 852, 3)
    assert (960 + h1 + h2, 852 + w1 + w2) == (976, 896)
    assert official_pad_to_fit(480, 852) == (214, 214, 120, 120)


def test_tiles_cover_and_blend() -> None:
    tiles = plan_tiles(122, 216, 34, 64, 8, num_downsamples=3)
    total = torch.zeros(122, 216)
    for (y0, y1, x0, x1), weight in zip(tiles, tile_weights(tiles, 122, 216)):
        assert weight.shape == (y1 - y0, x1 - x0) and (weight > 0).all()
        total[y0:y1, x0:x1] += weight
    torch.testing.assert_close(total, torch.ones(122, 216))
    assert all(y1 - y0 == 34 and x1 - x0 == 64 for y0, y1, x0, x1 in tiles)
    latent = torch.randn(1, 4, 2, 122, 216)
    parts = [latent[..., y0:y1, x0:x1] for y0, y1, x0, x1 in tiles]
    torch.testing.assert_close(merge_tiles(parts, tiles, 122, 216), latent)
    out = tiled_denoiser(lambda xt, t, tile: -xt, tiles)(latent, torch.tensor([1]))
    torch.testing.assert_close(out, -latent)
    with pytest.raises(ValueError, match="downsamples"):
        plan_tiles(122, 216, 32, 64, 8, num_downsamples=3)
    assert plan_tiles(10, 12, 34, 64, 8) == [(0, 10, 0, 12)]  # smaller than a tile: one tile


@pytest.mark.parametrize("max_len", [4, 5, 6, 7, 8, 32])
def test_hard_cut_is_the_official_rule_for_official_chunks(max_len: int) -> None:
    # README §3: O = chunk_inds[0][1] - chunk_inds[1][0], c = O//2; the first window keeps local
    # [0, len-O+c), middle ones [c, len-O+c), the last [c, len).
    for frames in range(max_len + 1, 120):
        windows = official_chunks(frames, max_len)
        if official_merge_fails(frames, max_len):
            continue
        overlap = windows[0][1] - windows[1][0]
        c = overlap // 2
        expected = []
        for k, (start, stop) in enumerate(windows):
            length = stop - start
            lo = 0 if k == 0 else c
            hi = length if k == len(windows) - 1 else length - overlap + c
            expected.append((start + lo, start + hi))
        assert hard_cut_keeps(windows) == expected, (frames, max_len)
