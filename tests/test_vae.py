"""SVD VAE on videos: shapes and the multiple-of-8 contract, seeded sampling, 3-frame decode groups,
the tile plan (bounded tiles at any size), and tiled vs untiled encode/decode."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from star_model import vae
from star_model.tiles import scale_tiles, tile_weights
from star_model.vae import TINY, VideoVae


@pytest.fixture(scope="module")
def model():
    return vae.build_vae(TINY, seed=0)


def _smooth_frames(num_frames: int, height: int, width: int, period: int = 16) -> torch.Tensor:
    """(F, 3, H, W) in [-0.8, 0.8]: slow sinusoids, a different phase per channel and frame. With a
    period dividing the tile size every tile sees about the same statistics as the whole frame."""
    yy, xx = torch.meshgrid(torch.arange(height) / period, torch.arange(width) / period, indexing="ij")
    return torch.stack([
        torch.stack([0.8 * torch.sin(2 * math.pi * (xx + 0.5 * c * yy) + 0.2 * f + c) for c in range(3)])
        for f in range(num_frames)])


def _rel_error(tiled: torch.Tensor, full: torch.Tensor) -> float:
    return ((tiled - full).abs().mean() / full.std()).item()


def test_config_presets_and_validation():
    assert vae.OFFICIAL.block_out_channels == (128, 256, 512, 512)
    assert vae.OFFICIAL.layers_per_block == 2 and vae.OFFICIAL.latent_channels == 4
    assert vae.OFFICIAL.scaling_factor == 0.18215 and vae.OFFICIAL.decode_group_frames == 3
    assert vae.OFFICIAL.encode_tile_px is None and vae.OFFICIAL.decode_tile_latent is None
    assert vae.OFFICIAL.downsample == TINY.downsample == 8
    with pytest.raises(ValueError, match="GroupNorm"):
        vae.VaeConfig(block_out_channels=(16, 16, 16, 16))
    with pytest.raises(ValueError, match="multiples"):
        vae.VaeConfig(encode_tile_px=100)
    with pytest.raises(ValueError, match="decode_overlap_latent"):
        vae.VaeConfig(decode_tile_latent=8, decode_overlap_latent=8)


def test_shapes_and_size_contract(model):
    v = VideoVae(model, TINY)
    with pytest.raises(ValueError, match="pad the frames to 40x56"):
        v.encode(torch.zeros(2, 3, 36, 52))
    frames = _smooth_frames(2, 40, 56)  # 36x52 padded to multiples of 8
    z = v.encode(frames, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 5, 7) and z.dtype == torch.float32
    out = v.decode(z)
    assert out.shape == (2, 3, 40, 56) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="latents"):
        v.decode(torch.zeros(2, 3, 5, 7))


def test_encode_matches_diffusers_and_is_seeded(model):
    v = VideoVae(model, TINY)
    frames = _smooth_frames(3, 32, 48)
    with torch.no_grad():
        dist = model.encode(frames).latent_dist
    mean = v.encode(frames, sample=False)
    torch.testing.assert_close(mean, dist.mean * 0.18215)
    a = v.encode(frames, generator=torch.Generator().manual_seed(7))
    b = v.encode(frames, generator=torch.Generator().manual_seed(7))
    c = v.encode(frames, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # the sample is mean + std * noise, noise drawn frame by frame: frame batching does not change it
    one_by_one = VideoVae(model, dataclasses.replace(TINY, encode_batch_frames=1))
    torch.testing.assert_close(one_by_one.encode(frames, generator=torch.Generator().manual_seed(7)), a)
    noise = (a - mean) / (dist.std * 0.18215)
    second_frame_noise = torch.randn(noise[1:2].shape, generator=_advanced(7, noise[0:1].shape))
    torch.testing.assert_close(noise[1:2], second_frame_noise)


def _advanced(seed: int, shape) -> torch.Generator:
    """A generator seeded with `seed` that has drawn one frame of noise already."""
    generator = torch.Generator().manual_seed(seed)
    torch.randn(shape, generator=generator)
    return generator


@pytest.mark.parametrize("num_frames", [1, 4, 5])
def test_decode_groups_of_three(model, num_frames):
    v = VideoVae(model, TINY)
    z = torch.randn(num_frames, 4, 4, 6, generator=torch.Generator().manual_seed(num_frames))
    out = v.decode(z)
    assert out.shape == (num_frames, 3, 32, 48)
    # the official way: independent groups of up to 3 frames, each decoded with its own num_frames
    with torch.no_grad():
        expected = torch.cat([model.decode(z[i:i + 3] / 0.18215, num_frames=len(z[i:i + 3])).sample
                              for i in range(0, num_frames, 3)])
    assert torch.equal(out, expected)
    if num_frames >= 4:
        # a change in frame 3 (second group) reaches its group's frames only
        changed = z.clone()
        changed[3] += 1.0
        out2 = v.decode(changed)
        assert torch.equal(out2[:3], out[:3])
        assert not torch.allclose(out2[3:], out[3:])
    if num_frames == 5:
        # the temporal decoder mixes frames inside a group: frame 4 changes too
        assert not torch.allclose(out2[4], out[4])


def test_decode_out_device_and_grad(model):
    v = VideoVae(model, TINY)
    z = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert not v.decode(z).requires_grad
    out = v.decode(z, grad=True)
    out.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert v.decode(z.detach(), out_device="cpu").device.type == "cpu"


def test_tile_plan_bounds_memory_at_any_resolution():
    cfg = vae.TILED
    counts = []
    for height, width in [(720, 1280), (1080, 1920), (2160, 3840), (4320, 7680)]:
        h, w = height // 8, width // 8
        encode_plan = cfg.encode_tiles(h, w)
        decode_plan = cfg.decode_tiles(h, w)
        for plan in (encode_plan, decode_plan):
            covered = torch.zeros(h, w, dtype=torch.bool)
            for y0, y1, x0, x1 in plan:
                # every tile is at most 96x96 latent = 768x768 pixels, whatever the frame size
                assert y1 - y0 <= 96 and x1 - x0 <= 96
                covered[y0:y1, x0:x1] = True
            assert covered.all()
        counts.append(len(decode_plan))
    assert counts == sorted(counts) and counts[-1] > 10 * counts[0]


def test_pixel_tile_weights_sum_to_one():
    for tile, overlap, scale in [(8, 3, 1), (8, 2, 8), (6, 1, 8), (5, 0, 1), (4, 2, 1), (None, 2, 8)]:
        tiles = scale_tiles(vae._latent_tiles(13, 19, tile, overlap), scale)
        total = torch.zeros(13 * scale, 19 * scale)
        for (y0, y1, x0, x1), weight in zip(tiles, tile_weights(tiles, 13 * scale, 19 * scale)):
            assert weight.shape == (y1 - y0, x1 - x0) and (weight > 0).all()
            total[y0:y1, x0:x1] += weight
        torch.testing.assert_close(total, torch.ones_like(total))
    ((weight),) = tile_weights([(0, 104, 0, 152)], 104, 152)  # one tile: weight exactly 1
    assert torch.equal(weight, torch.ones(104, 152))


def test_one_tile_covering_the_frame_is_exactly_untiled(model):
    frames = _smooth_frames(4, 48, 64)
    untiled = VideoVae(model, TINY)
    covering = VideoVae(model, dataclasses.replace(TINY, encode_tile_px=64, encode_overlap_px=16,
                                                   decode_tile_latent=8, decode_overlap_latent=2))
    a = untiled.encode(frames, generator=torch.Generator().manual_seed(1))
    b = covering.encode(frames, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert torch.equal(untiled.decode(a), covering.decode(b))


# Mean |tiled - untiled| / std(untiled), measured on the 96x128 smooth input below with the tiny
# random VAE. Random weights make the network far less local than a trained VAE (each tile's
# GroupNorm statistics and mid-block attention change every latent, not just the seams), so these
# are loose; the tests pin the trends: bigger tiles -> smaller error; overlapped and feathered tiles
# beat tiles butted together; one covering tile -> exact.
#   encode (px tile/overlap): 32/16 0.66, 64/16 0.32, 64/0 0.38
#   decode (latent tile/overlap): 4/2 0.85, 8/2 0.59, 8/0 0.62
def test_tiled_encode_close_to_untiled(model):
    frames = _smooth_frames(2, 96, 128)
    full = VideoVae(model, TINY).encode(frames, sample=False)

    def error(tile, overlap):
        cfg = dataclasses.replace(TINY, encode_tile_px=tile, encode_overlap_px=overlap)
        return _rel_error(VideoVae(model, cfg).encode(frames, sample=False), full)

    small, large, butted = error(32, 16), error(64, 16), error(64, 0)
    assert large < 0.4 and small < 0.8
    assert large < small and large < butted


def test_tiled_decode_close_to_untiled(model):
    z = VideoVae(model, TINY).encode(_smooth_frames(3, 96, 128), sample=False)
    full = VideoVae(model, TINY).decode(z)

    def error(tile, overlap):
        cfg = dataclasses.replace(TINY, decode_tile_latent=tile, decode_overlap_latent=overlap)
        return _rel_error(VideoVae(model, cfg).decode(z), full)

    small, large, butted = error(4, 2), error(8, 2), error(8, 0)
    assert large < 0.7 and small < 1.0
    assert large < small and large < butted


def test_load_from_svd_folder_with_fp16_variant(tmp_path, model):
    model.half().save_pretrained(tmp_path / "vae", variant="fp16")  # the SVD repository layout
    model.float()
    loaded = vae.load_vae(tmp_path, TINY)
    assert loaded.dtype == torch.float32 and loaded.scaling_factor == pytest.approx(0.18215)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key].half().float())


def test_load_plain_folder_and_errors(tmp_path, model):
    model.save_pretrained(tmp_path / "plain")
    loaded = vae.load_vae(tmp_path / "plain", TINY)
    z = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(z), VideoVae(model, TINY).decode(z))
    with pytest.raises(ValueError, match="block_out_channels"):
        vae.load_vae(tmp_path / "plain", vae.OFFICIAL)
    with pytest.raises(ValueError, match="stable-video-diffusion"):
        vae.load_vae(tmp_path / "missing")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_half_precision(model, device):
    """fp16 / bf16 weights: computed in the module's dtype, returned as fp32 (measured on CPU: mean
    |half - fp32| / std = 0.010 for fp16, 0.10 for bf16)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    frames = _smooth_frames(2, 32, 48)
    reference = VideoVae(model, TINY)
    expected = reference.decode(reference.encode(frames, sample=False))
    for dtype in (torch.float16, torch.bfloat16):
        half = VideoVae(vae.build_vae(TINY, seed=0).to(device, dtype), vae.TILED)
        z = half.encode(frames, generator=torch.Generator(device).manual_seed(0))
        assert z.device.type == device and z.dtype == torch.float32
        out = half.decode(z, out_device="cpu")
        assert out.shape == (2, 3, 32, 48) and out.dtype == torch.float32 and torch.isfinite(out).all()
        mean = half.decode(half.encode(frames, sample=False), out_device="cpu")
        assert _rel_error(mean, expected) < 0.25
