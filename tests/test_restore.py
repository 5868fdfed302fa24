"""StarRestorer on the TINY preset (random weights): shapes, frame counts, determinism, tiling, modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from star_model.presets import load_restorer, resolve_weights, get_preset
from star_model.restore import RestoreConfig, StarRestorer

FAST_TEST = dict(solver_mode="normal", steps=2)  # 2 evaluations instead of 14: same code path


def _frames(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


BASE = RestoreConfig(scale=2, **FAST_TEST)


@pytest.fixture(scope="module")
def tiny_models():
    """The TINY models, built once per module; no test changes them."""
    restorer = load_restorer("tiny", device="cpu")
    return restorer.denoiser, restorer.text, restorer.vae


@pytest.fixture
def restorer(tiny_models):
    """A restorer of this test's own (BASE settings) over the module's models."""
    return StarRestorer(*tiny_models, BASE)


def _with(restorer, config=BASE, **changes):
    """Another restorer over the same models, with `config` plus `changes`."""
    return StarRestorer(restorer.denoiser, restorer.text, restorer.vae, config.replace(**changes))


@pytest.mark.parametrize("frames, height, width, scale", [
    (3, 180, 318, 2),  # odd width, height not a multiple of 8
    (2, 544, 1280, 1),  # wide; tiled (see the tile setting below)
    (1, 1, 1, 4),  # one frame of one pixel
    (5, 7, 9, 3),  # any integer scale
])
def test_shapes_and_dtype_for_odd_sizes(restorer, frames, height, width, scale):
    tile = (34, 64) if width >= 1280 else None
    out = _with(restorer, scale=scale, tile=tile)(_frames(frames, height, width), "a cat")
    assert out.shape == (frames, height * scale, width * scale, 3)
    assert out.dtype == np.uint8
    assert len(np.unique(out)) > 1 or height * width == 1  # not a constant (e.g. NaN-cast) image


@pytest.mark.parametrize("count", [1, 33, 40])
@pytest.mark.parametrize("merge", ["weighted", "hard_cut"])
def test_every_frame_count_restores(restorer, count, merge):
    """33-40 frames crash the official sampler (one chunk, then an IndexError); ours restores them."""
    out = _with(restorer, temporal_merge=merge)(_frames(count, 16, 16), "")
    assert out.shape == (count, 32, 32, 3)


def test_official_chunking_handles_the_official_crash_range(restorer):
    official = _with(restorer, RestoreConfig.official(scale=2, padding="minimal", **FAST_TEST))
    out = official(_frames(36, 16, 16), "")
    assert out.shape == (36, 32, 32, 3)


def test_seed_determines_the_output(restorer):
    clip = _frames(4, 24, 32)
    first, again = restorer(clip, "a dog", seed=7), restorer(clip, "a dog", seed=7)
    other = restorer(clip, "a dog", seed=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("mode", ["per_frame", "shared"])
def test_start_noise_is_per_frame_or_one_field_for_all_frames(restorer, mode, monkeypatch):
    import star_model.restore as restore_module

    seen = []
    real = restore_module.sdedit_start
    monkeypatch.setattr(restore_module, "sdedit_start", lambda s, z, eps, t: seen.append(eps) or real(s, z, eps, t))
    _with(restorer, start_noise=mode)(_frames(3, 16, 16), "")
    eps = seen[0]  # (1, C, F, h, w)
    same = [torch.equal(eps[:, :, 0], eps[:, :, k]) for k in (1, 2)]
    assert same == ([True, True] if mode == "shared" else [False, False])
    assert 0.8 < float(eps.std()) < 1.2


def test_a_tile_covering_the_frame_equals_no_tiling(restorer):
    clip = _frames(3, 24, 32)
    untiled = _with(restorer)(clip, "", seed=1)
    # 48x64 output -> latent 6x8 (already a valid size): one tile of exactly the frame
    covering = _with(restorer, tile=(6, 8))(clip, "", seed=1)
    assert np.array_equal(untiled, covering)


class PointwiseDenoiser(torch.nn.Module):
    """A network whose output at a latent pixel depends on that pixel only.

    With random weights the tiny STAR network is far from local (each tile's GroupNorm statistics
    change everything), so it cannot show whether tiles are cut, aligned and blended right; this
    stand-in can: for it, tiled and untiled restoration must agree.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.gain = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, y, *, hint):
        return self.gain * x + 0.1 * hint * (t.view(-1, 1, 1, 1, 1) / 1000)


def test_tiles_and_windows_are_cut_and_blended_in_place(restorer):
    y, x = np.mgrid[0:40, 0:64]
    smooth = np.stack([(y * 3) % 256, (x * 2) % 256, (x + y) % 256], -1).astype(np.uint8)
    clip = np.stack([np.roll(smooth, k, axis=1) for k in range(12)])
    pointwise = PointwiseDenoiser(restorer.denoiser.cfg)
    whole = StarRestorer(pointwise, restorer.text, restorer.vae, BASE)(clip, "", seed=1).astype(int)
    pieces_config = BASE.replace(tile=(6, 8), tile_overlap=4, window=5, window_overlap=2)
    pieces = StarRestorer(pointwise, restorer.text, restorer.vae, pieces_config)(clip, "", seed=1).astype(int)
    assert np.abs(pieces - whole).max() <= 1  # float rounding at the uint8 step only


def test_rounding_modes_differ_only_by_truncation(restorer):
    clip = _frames(2, 16, 16)
    rounded = _with(restorer, rounding="round")(clip, "", seed=3).astype(int)
    truncated = _with(restorer, rounding="truncate")(clip, "", seed=3).astype(int)
    diff = rounded - truncated
    assert diff.min() >= 0 and diff.max() <= 1 and diff.any()


def test_colour_fix_modes_run(restorer):
    clip = _frames(2, 16, 16)
    outs = {mode: _with(restorer, color_fix=mode)(clip, "", seed=3) for mode in ("adain", "wavelet", "none")}
    assert not np.array_equal(outs["adain"], outs["none"])
    # AdaIN matches each output frame's channel means to the LR input's
    lr_means = clip.reshape(2, -1, 3).mean(1)
    assert np.abs(outs["adain"].reshape(2, -1, 3).mean(1) - lr_means).max() < 3.0


def test_bad_frames_are_refused(restorer):
    with pytest.raises(ValueError, match="uint8"):
        restorer(np.zeros((2, 8, 8, 3), dtype=np.float32), "")
    with pytest.raises(ValueError, match="uint8"):
        restorer(np.zeros((8, 8, 3), dtype=np.uint8), "")
    with pytest.raises(ValueError, match="empty"):
        restorer(np.zeros((0, 8, 8, 3), dtype=np.uint8), "")


def test_bad_config_is_refused_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        RestoreConfig(scale=0)
    with pytest.raises(ValueError, match="hard_cut"):
        RestoreConfig(official_chunking=True)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="needs --weights"):
        resolve_weights(get_preset("official"), None)
    with pytest.raises(ValueError, match="light_deg"):
        resolve_weights(get_preset("official"), tmp_path)
    (tmp_path / "star").mkdir()
    (tmp_path / "star" / "light_deg.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="laion"):
        resolve_weights(get_preset("official"), tmp_path)


def test_official_padding_builds_the_official_canvas(restorer):
    restorer = _with(restorer, RestoreConfig.official(scale=4))
    left, right, top, bottom = restorer._padding(960, 1704)  # the toy example 240x426 x4
    assert (960 + top + bottom, 1704 + left + right) == (976, 1728) and (top, left) == (0, 0)
    padding = restorer._padding(480, 852)
    padded = restorer._upscale(torch.zeros(1, 3, 120, 213), padding)
    assert tuple(padded.shape[2:]) == (720, 1280) and (padding[2], padding[0]) == (120, 214)
    assert padded[0, 0, 0, 0] == 1.0  # the official pads with white


def test_sixteen_bit_frames_come_back_sixteen_bit(restorer):
    """A 10- or 12-bit source reaches the model as uint16 and its result is not rounded to 8 bits:
    the same picture as uint8 restores to the same values, the uint16 run to finer ones."""
    frames_u8 = _frames(2, 16, 16)
    frames_u16 = frames_u8.astype(np.uint16) * 257  # the same picture on the 16-bit scale
    out_u8, out_u16 = restorer(frames_u8, "", seed=3), restorer(frames_u16, "", seed=3)
    assert out_u16.dtype == np.uint16 and out_u16.shape == out_u8.shape
    assert np.abs(out_u16.astype(int) - out_u8.astype(int) * 257).max() <= 257  # one 8-bit step at most
    assert (out_u16 % 257 != 0).mean() > 0.5  # values between the 8-bit levels


@pytest.mark.parametrize("color_fix, rounding", [("adain", "round"), ("wavelet", "truncate"), ("none", "round")])
def test_streaming_in_chunks_gives_the_output_of_one_chunk(restorer, color_fix, rounding):
    """Pre-upscale, encode, decode, colour fix and uint8 conversion run a chunk of frames at a time (host
    memory); the chunking changes nothing. The tiny VAE encodes batches of 4 frames and decodes groups of
    3, so chunks of 1, 2 and 4 frames become 4, 4, 4 in and 3, 3, 6 out, and 7 frames end on a short
    chunk."""
    config = BASE.replace(color_fix=color_fix, rounding=rounding)
    clip = _frames(7, 20, 28)
    whole = _with(restorer, config, host_chunk_frames=7)
    expected = whole(clip, "a cat")
    assert (whole.last_host_plan.encode_chunk, whole.last_host_plan.decode_chunk) == (8, 9)  # one chunk each
    for chunk in (1, 2, 4):
        chunked = _with(restorer, config, host_chunk_frames=chunk)
        assert np.array_equal(chunked(clip, "a cat"), expected), chunk
        assert (chunked.last_host_plan.encode_chunk, chunked.last_host_plan.decode_chunk) == (4, 3 * -(-chunk // 3))
