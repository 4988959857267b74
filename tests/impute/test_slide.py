"""Slide level: attention-MIL learns a planted bag-level signal from real tile features; her2st
pseudo-slides are contiguous regions whose bulk is the sum of their spots' counts."""

from __future__ import annotations

import numpy as np
import pytest

from mupd.errors import MupdError
from mupd.impute import evaluate
from mupd.impute.features import pixel_features
from mupd.impute.slide import fit_mil, her2st_pseudo_slides, predict_mil, read_feature_h5


def test_pseudo_slides_are_contiguous_regions_with_summed_counts(mini_table):
    feats = pixel_features(mini_table.images)
    bags, bulk, groups = her2st_pseudo_slides(mini_table, feats, n_bags_per_section=3, region=8, seed=0)
    assert len(bags) == 6 and groups == ["B4"] * 3 + ["C5"] * 3
    for bag, total in zip(bags, bulk):
        rows = [np.where((feats == tile).all(1))[0][0] for tile in bag]
        assert np.allclose(mini_table.counts[rows].sum(0), total)
        xy = mini_table.coords[rows]
        span = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)).max()
        assert span < 4 * 300  # 8 nearest spots (~256 px apart) stay within a few spot pitches


def test_mil_regressor_learns_planted_signal_on_real_tile_features(mini_table):
    feats = pixel_features(mini_table.images)  # real H&E tiles, 768 values each
    rng = np.random.default_rng(0)
    bags = [feats[rng.choice(len(feats), rng.integers(6, 14), replace=False)] for _ in range(100)]
    z = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    w = rng.normal(size=(feats.shape[1], 3)) / np.sqrt(feats.shape[1])
    def planted(bag):  # gene 1-2: mean of a tile-level projection; gene 3: the fraction of "positive" tiles
        zb = (bag - feats.mean(0)) / (feats.std(0) + 1e-6)
        p = zb @ w
        return np.array([p[:, 0].mean(), p[:, 1].mean(), (p[:, 2] > np.median(z @ w[:, 2])).mean()])
    y = np.stack([planted(b) for b in bags])
    model, mean, std, history = fit_mil(bags[:75], y[:75], epochs=30, hidden=64, seed=0)
    assert history[-1] < 0.5 * history[0]
    pred = predict_mil(model, mean, std, bags[75:])
    r = evaluate.gene_metrics(y[75:], pred)["pearson"]
    assert r.min() > 0.6, r
    with pytest.raises(MupdError, match="feature width"):
        predict_mil(model, mean, std, [feats[:5, :100]])


def test_feature_files_are_validated(tmp_path, mini_table):
    import h5py

    feats = pixel_features(mini_table.images).astype(np.float32)
    good = tmp_path / "slide.h5"
    with h5py.File(good, "w") as f:
        f["features"] = feats
        f["coords"] = mini_table.coords.astype(np.int64)
    x, coords = read_feature_h5(good, expected_dim=768)
    assert x.shape == feats.shape and coords.shape == (len(feats), 2)
    with pytest.raises(MupdError, match="768-wide but the model expects 1024"):
        read_feature_h5(good, expected_dim=1024)
    bad = tmp_path / "nan.h5"
    with h5py.File(bad, "w") as f:
        f["features"] = np.full((3, 4), np.nan, np.float32)
    with pytest.raises(MupdError, match="NaN"):
        read_feature_h5(bad)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(MupdError, match="not readable HDF5"):
        read_feature_h5(tmp_path / "junk.h5")


def test_slide_protocol_runs_on_real_pseudo_slides(mini_table):
    from mupd.impute import protocols
    from mupd.impute.slide_protocol import run_slide_protocol

    result = run_slide_protocol(protocols.get("her2st-lopo", n_genes=20), mini_table, pixel_features(mini_table.images),
                                n_bags_per_section=6, region=10, epochs=2)
    assert set(result["methods"]) == {"mean", "bagmean-ridge", "abmil"} and "not TCGA" in result["data"]
    assert [f["n_test_bags"] for f in result["methods"]["abmil"]["folds"]] == [6, 6]
