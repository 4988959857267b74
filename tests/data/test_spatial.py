"""Spatial transcriptomics loaders on the real her2st and Visium (squidpy, stLearn) sample data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mupd.data.expression import GeneVocabulary
from mupd.data.spatial import her2st_sections, load_her2st, load_visium
from mupd.errors import MupdError


def test_her2st_section_crops_and_counts(sample_data):
    root = sample_data / "her2st"
    assert her2st_sections(root) == ["B4", "C2", "C3", "C4", "C5"]
    table = load_her2st(root, ["C2", "A1"], crop=224, size=64, max_spots=40)
    assert len(table) == 40 and table.images.shape == (40, 64, 64, 3) and table.images.dtype == np.uint8
    # A1 has counts but no image here: reported, not silently dropped
    assert table.skipped["in sections without an H&E image"]["first"] == ["A1"]
    raw = pd.read_csv(root / "ST-cnts" / "C2.tsv.gz", sep="\t", index_col=0)
    spot = table.ids[5].split("_", 1)[1]
    np.testing.assert_array_equal(table.counts[5], raw.loc[spot, table.genes].to_numpy(np.float32))
    spots = pd.read_csv(root / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    x, y = map(int, spot.split("x"))
    row = spots[(spots.x == x) & (spots.y == y)].iloc[0]
    np.testing.assert_allclose(table.coords[5], [row.pixel_x, row.pixel_y])
    assert table.images.std() > 10  # real tissue, not padding
    records = table.records()
    vocab = GeneVocabulary.fit(table.counts, table.genes, top_k=200)
    z, report = vocab.transform(records[0].expression, records[0].genes, sample_ids=[records[0].id])
    assert z.shape == (1, 200) and report.missing == []


def test_her2st_reports_spots_without_counts_and_outside_the_image(sample_data, tmp_path):
    root = tmp_path / "her2st"
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs"):
        (root / sub).mkdir(parents=True)
    src = sample_data / "her2st"
    (root / "ST-cnts" / "B4.tsv.gz").symlink_to(src / "ST-cnts" / "B4.tsv.gz")
    (root / "ST-imgs" / "B4").symlink_to(src / "ST-imgs" / "B4", target_is_directory=True)
    spots = pd.read_csv(src / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
    spots.loc[0, "pixel_x"] = 20_000  # a spot beyond the 9,272 px wide image (edited copy)
    spots.to_csv(root / "ST-spotfiles" / "B4_selection.tsv", sep="\t", index=False)
    table = load_her2st(root, ["B4"], crop=224, size=32)
    # B4's real spot file lists one position with no counts row; plus the moved spot
    assert table.skipped["of section B4 with a position but no counts"] == {"count": 1, "first": ["B4_18x20"]}
    (reason,) = [k for k in table.skipped if k.startswith("outside")]
    moved = f"B4_{spots.x[0]}x{spots.y[0]}"
    assert table.skipped[reason] == {"count": 1, "first": [moved]}
    assert len(table) == 282 and moved not in table.ids
    with pytest.raises(MupdError, match="with a position but no counts"):
        load_her2st(root, ["B4"], crop=32, strict=True)


def test_visium_anndata_scales(sample_data, tmp_path):
    squidpy = load_visium(sample_data / "visium" / "squidpy" / "test_data.h5ad",
                          sample_data / "visium" / "squidpy" / "test_img.jpg", size=32)
    assert len(squidpy) == 49 and squidpy.meta["scale"] == "fullres" and squidpy.counts.shape == (49, 1999)
    assert squidpy.images.shape == (49, 32, 32, 3)
    stlearn = load_visium(sample_data / "visium" / "stlearn" / "test_data.h5",
                          sample_data / "visium" / "stlearn" / "test_image.jpg")
    # the 2000 px image is the hires image: coordinates are mapped with tissue_hires_scalef
    assert stlearn.meta["scale"] == "hires" and len(stlearn) == 316 and stlearn.counts.shape == (316, 100)
    assert stlearn.meta["values"].startswith("normalised")  # negative values: not raw counts
    # squidpy's stored 100 px hires image cannot hold most spots: they are reported
    tiny = load_visium(sample_data / "visium" / "squidpy" / "test_data.h5ad")
    (reason,) = tiny.skipped
    assert tiny.skipped[reason]["count"] == 49 - len(tiny)
    with pytest.raises(MupdError, match="outside"):
        load_visium(sample_data / "visium" / "squidpy" / "test_data.h5ad", strict=True)
    small = tmp_path / "small.png"
    Image.open(sample_data / "visium" / "stlearn" / "test_image.jpg").crop((0, 0, 300, 300)).save(small)
    with pytest.raises(MupdError, match="fit the 300x300 image under no stored scale"):
        load_visium(sample_data / "visium" / "stlearn" / "test_data.h5", small)
