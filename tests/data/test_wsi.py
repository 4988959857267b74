"""Whole-slide tiling on the real CMU-1-Small-Region SVS (one level, 0.499 um/px, 20x)."""

from __future__ import annotations

import h5py
import numpy as np
import openslide
import pytest
from PIL import Image

from mupd.data.tiling import tile_slides
from mupd.data.wsi import open_slide, plan_tiles, read_coords, read_tiles, save_coords, slide_mpp, tile_records, tissue_mask
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def slide_path(sample_data):
    return sample_data / "wsi" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def slide_and_mask(slide_path):
    slide = open_slide(slide_path)
    return slide, tissue_mask(slide)


def test_tiling_at_1um_matches_plain_openslide(slide_and_mask, slide_path):
    slide, mask = slide_and_mask
    assert slide.level_count == 1 and slide_mpp(slide) == pytest.approx(0.499)  # a single level: reported in meta
    assert 0.1 < mask[0].mean() < 0.9  # real tissue and real glass on the thumbnail
    grid = plan_tiles(slide, mpp=1.0, size=128, mask=mask, name=slide_path.name)
    assert grid.meta["level_count"] == 1 and grid.level == 0
    assert grid.read_size == round(128 * 1.0 / 0.499) and 0 < len(grid) < grid.meta["n_grid"]
    (xy, tile), = list(read_tiles(slide, grid, [0]))
    reference = slide.read_region(tuple(int(v) for v in xy), 0, (grid.read_size,) * 2).convert("RGB")
    reference = np.asarray(reference.resize((128, 128), Image.BICUBIC))
    np.testing.assert_array_equal(np.asarray(tile), reference)
    # overlap shrinks the stride
    dense = plan_tiles(slide, mpp=1.0, size=128, overlap=64, mask=mask)
    assert dense.meta["n_grid"] > 3 * grid.meta["n_grid"]
    twenty = plan_tiles(slide, magnification=20, size=256, mask=mask)
    assert twenty.read_size == 256 and twenty.mpp == pytest.approx(0.499)


def test_coords_round_trip_and_trident_files(slide_and_mask, slide_path, tmp_path):
    slide, mask = slide_and_mask
    grid = plan_tiles(slide, mpp=2.0, size=64, mask=mask)
    back = read_coords(save_coords(tmp_path / "ours.h5", grid))
    np.testing.assert_array_equal(back.coords, grid.coords)
    assert (back.level, back.read_size, back.size) == (grid.level, grid.read_size, grid.size)
    # a TRIDENT/CLAM file carries only coords + patch_size/patch_level: tiles are read as stored
    with h5py.File(tmp_path / "trident.h5", "w") as f:
        d = f.create_dataset("coords", data=np.array([[0, 0], [512, 1024]], dtype=np.int64))
        d.attrs["patch_size"], d.attrs["patch_level"] = 256, 0
    records = tile_records(slide_path, read_coords(tmp_path / "trident.h5"))
    assert [r.meta["x"] for r in records] == [0, 512] and records[1].image.shape == (256, 256, 3)
    np.testing.assert_array_equal(records[1].image, np.asarray(slide.read_region((512, 1024), 0, (256, 256)).convert("RGB")))
    with h5py.File(tmp_path / "far.h5", "w") as f:
        d = f.create_dataset("coords", data=np.array([[5000, 0]], dtype=np.int64))
        d.attrs["patch_size"], d.attrs["patch_level"] = 256, 0
    with pytest.raises(MupdError, match="outside the 2220x2967 slide"):
        tile_records(slide_path, read_coords(tmp_path / "far.h5"))


def test_slide_without_mpp_needs_level_or_stated_assumption(slide_path, tmp_path):
    data = slide_path.read_bytes().replace(b"MPP = 0.499", b"XPP = 0.499")  # same length: the TIFF stays valid
    copy = tmp_path / "no_mpp.svs"
    copy.write_bytes(data)
    slide = open_slide(copy)
    assert slide_mpp(slide) is None
    mask = tissue_mask(slide)
    with pytest.raises(MupdError, match="no resolution metadata.*--level.*--assume-mpp"):
        plan_tiles(slide, mpp=1.0, size=128, mask=mask)
    with pytest.warns(UserWarning, match="ASSUMING 0.5"):
        grid = plan_tiles(slide, mpp=1.0, size=128, assume_mpp=0.5, mask=mask)
    assert grid.meta["assumed_mpp"] and grid.read_size == 256
    assert plan_tiles(slide, level=0, size=128, mask=mask).read_size == 128


def test_bad_slides(tmp_path):
    blank = openslide.ImageSlide(Image.new("RGB", (800, 600), "white"))  # glass only
    with pytest.raises(MupdError, match="tissue mask is empty"):
        plan_tiles(blank, level=0, size=128)
    assert len(plan_tiles(blank, level=0, size=128, min_tissue=0)) == 6 * 4
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(MupdError, match="broken.svs could not be opened"):
        open_slide(broken)


def test_tile_job_writes_tiles_coords_manifest_and_resumes(slide_path, tmp_path):
    manifest, records = tile_slides(slide_path, tmp_path / "out", mpp=2.0, size=64, progress=False)
    tiles = sorted((tmp_path / "out" / "tiles" / "cmu_small_region").glob("*.png"))
    assert len(tiles) == len(records) > 0 and (tmp_path / "out" / "masks" / "cmu_small_region.png").exists()
    first = tiles[0].read_bytes()
    tiles[1].unlink()  # as if killed before this tile
    again, records2 = tile_slides(slide_path, tmp_path / "out", mpp=2.0, size=64, progress=False)
    assert [r.id for r in records2] == [r.id for r in records] and tiles[1].exists() and tiles[0].read_bytes() == first
