"""Tile blending and PNG metadata (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mupd.errors import MupdError
from mupd.pipelines.inputs import image_to_tensor, load_image
from mupd.pipelines.pngmeta import REQUIRED_KEYS, read_params, save_png, sha256_of
from mupd.pipelines.tiles import ramp, tile_starts, tiled_apply


@pytest.fixture(scope="module")
def ihc_region(sample_data):
    """A real 200x150 Ki67 IHC region (first panel of a DeepLIIF test image)."""
    panel = Image.open(sample_data / "stains/deepliif/Sample_Dataset/test/22_2.png").convert("RGB")
    return image_to_tensor([panel.crop((10, 20, 210, 170))])[0].double()


def test_tile_starts_cover_and_overlap():
    for length, tile, overlap in [(64, 64, 16), (65, 64, 16), (200, 64, 16), (1000, 96, 24), (30, 64, 8)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0
        assert starts[-1] + tile >= length
        if length > tile:
            assert starts[-1] + tile == length
            assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    with pytest.raises(MupdError, match="overlap"):
        tile_starts(100, 64, 64)


def test_ramp_is_positive_and_symmetric():
    for kind in ("cosine", "linear"):
        w = ramp(64, 16, kind)
        assert (w > 0).all() and torch.allclose(w, w.flip(0)) and w[16:48].eq(1).all()


def test_identity_translation_is_reproduced_without_seams(ihc_region):
    for overlap in (0, 8, 16, 31):
        out = tiled_apply(ihc_region, lambda t: t.clone(), tile=64, overlap=overlap, batch_size=3)
        assert out.shape == ihc_region.shape
        assert torch.allclose(out, ihc_region, atol=1e-12), overlap


def test_constant_and_channel_changing_functions(ihc_region):
    const = tiled_apply(ihc_region, lambda t: torch.full((t.shape[0], 2, 64, 64), 0.25, dtype=t.dtype), tile=64, overlap=16)
    assert const.shape == (2, 150, 200) and torch.allclose(const, torch.full_like(const, 0.25))
    grey = tiled_apply(ihc_region, lambda t: t.mean(1, keepdim=True), tile=64, overlap=16)
    assert torch.allclose(grey[0], ihc_region.mean(0), atol=1e-12)


def test_blending_removes_seams_of_tile_dependent_outputs(ihc_region):
    """Each tile adds its own brightness offset (a model that is not perfectly consistent):
    hard stitching shows a step at tile borders; blending spreads it over the overlap."""
    offsets = iter(torch.linspace(-0.5, 0.5, 64).tolist() * 4)

    def shifted(tiles):
        return torch.stack([t + next(offsets) for t in tiles])

    flat = torch.zeros(1, 150, 200, dtype=torch.float64)
    hard = tiled_apply(flat, shifted, tile=64, overlap=0)
    soft = tiled_apply(flat, shifted, tile=64, overlap=24)
    step = lambda x: max(x.diff(dim=1).abs().max().item(), x.diff(dim=2).abs().max().item())  # noqa: E731
    assert step(hard) > 0.01
    assert step(soft) < step(hard) / 4


def test_small_region_is_padded_and_cropped(ihc_region):
    small = ihc_region[:, :40, :50]
    out = tiled_apply(small, lambda t: t * 2, tile=64, overlap=16)
    assert torch.allclose(out, small * 2)


def test_tile_function_with_wrong_output_shape_is_refused(ihc_region):
    with pytest.raises(MupdError, match="tile function returned"):
        tiled_apply(ihc_region, lambda t: t[:, :, :32], tile=64, overlap=16)


def test_png_parameters_round_trip(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    params = {"mupd:model": {"path": "/m", "config_sha256": "abc"}, "mupd:conditions": {"text": "tumour"},
              "mupd:seed": 7, "mupd:sampler": "heun", "mupd:steps": 10, "mupd:guidance": {"text": 3.0},
              "mupd:strength": 0.5}
    path = save_png(image, tmp_path / "a.png", params)
    back = read_params(path)
    assert back == params
    assert set(REQUIRED_KEYS) <= set(back)
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    with pytest.raises(MupdError, match="lacks"):
        save_png(image, tmp_path / "b.png", {"mupd:seed": 1})
    assert not (tmp_path / "b.png").exists()


def test_condition_hash_is_stable_and_content_based():
    a = np.arange(6, dtype=np.float32)
    assert sha256_of(a) == sha256_of(a.copy()) == sha256_of(torch.arange(6.0))
    assert sha256_of(a) != sha256_of(a + 1)


def test_load_image_refuses_bad_images(tmp_path, sample_data):
    real = sample_data / "pcam/valid/1"
    first = sorted(real.iterdir())[0]
    assert load_image(first).size == (96, 96)
    with pytest.raises(MupdError, match="96x96 px but this model works on 64x64"):
        load_image(first, size=64)
    Image.open(first).convert("L").save(tmp_path / "grey.png")
    with pytest.raises(MupdError, match="mode L"):
        load_image(tmp_path / "grey.png")
    (tmp_path / "broken.png").write_bytes(Image.open(first).tobytes()[:300])
    with pytest.raises(MupdError, match="not a readable image"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(MupdError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(MupdError, match="uint8"):
        load_image(np.zeros((8, 8, 3), dtype=np.float32))
