"""Marker agreement for virtual staining (DAB / mIF channel) and biomarker AUC, on the real skimage IHC."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.stats import pearsonr

from mupd.errors import MupdError
from mupd.metrics.stains import biomarker_auc, marker_correlation, marker_maps, pearson


@pytest.fixture(scope="module")
def ihc_patches():
    from skimage import data

    image = data.immunohistochemistry()  # real IHC (DAB membrane stain + haematoxylin)
    return np.stack([image[r : r + 64, c : c + 64] for r in range(0, 512, 64) for c in range(0, 512, 128)])  # 32 patches


def test_dab_pearson_is_one_for_identical_and_drops_under_perturbation(ihc_patches):
    same = marker_correlation(ihc_patches, ihc_patches.copy(), n_resamples=50)
    assert same["pixel_pearson_mean"] == pytest.approx(1.0)
    assert same["patch_pearson"]["value"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(ihc_patches + rng.normal(scale=40, size=ihc_patches.shape), 0, 255).astype(np.uint8)
    blurred = ndi.uniform_filter(ihc_patches, size=(1, 9, 9, 1))
    shuffled = ihc_patches[rng.permutation(len(ihc_patches))]
    r_noisy = marker_correlation(ihc_patches, noisy, n_resamples=20)["pixel_pearson_mean"]
    r_blur = marker_correlation(ihc_patches, blurred, n_resamples=20)["pixel_pearson_mean"]
    r_shuffled = marker_correlation(ihc_patches, shuffled, n_resamples=20)
    assert r_noisy < 0.95 and r_blur < 0.95
    assert abs(r_shuffled["pixel_pearson_mean"]) < 0.3 and r_shuffled["patch_pearson"]["value"] < 0.9


def test_patch_and_slide_level_pearson_match_scipy(ihc_patches):
    rng = np.random.default_rng(1)
    generated = np.clip(ihc_patches * rng.uniform(0.9, 1.1, size=(len(ihc_patches), 1, 1, 1)), 0, 255).astype(np.uint8)
    slides = np.repeat(np.arange(8), 4)
    out = marker_correlation(generated, ihc_patches, slides=slides, n_resamples=20)
    g, r = marker_maps(generated).mean((1, 2)), marker_maps(ihc_patches).mean((1, 2))
    assert out["patch_pearson"]["value"] == pytest.approx(pearsonr(g, r)[0], rel=1e-9)
    gs, rs = g.reshape(8, 4).mean(1), r.reshape(8, 4).mean(1)
    assert out["slide_pearson"] == pytest.approx(pearsonr(gs, rs)[0], rel=1e-9) and out["n_slides"] == 8


def test_mif_channels_and_shape_errors():
    rng = np.random.default_rng(0)
    mif = rng.random((6, 16, 32, 32))  # (N, C, H, W), 16-channel multiplex IF
    assert marker_correlation(mif, mif, channel=3, n_resamples=10)["pixel_pearson_mean"] == pytest.approx(1.0)
    with pytest.raises(MupdError, match="channel"):
        marker_correlation(mif, mif, channel=20)
    with pytest.raises(MupdError, match="pair one to one"):
        marker_correlation(mif[:3], mif, channel=0)
    assert np.isnan(pearson(np.ones(5), np.arange(5)))


def test_biomarker_auc_real_vs_generated(ihc_patches):
    dab = marker_maps(ihc_patches).mean((1, 2))
    status = (dab > np.median(dab)).astype(int)  # "marker-high" status defined on the real stain
    faithful = ihc_patches
    washed_out = np.full_like(ihc_patches, 200)  # a generator that loses the DAB signal
    washed_out[:, :, :, 2] = np.random.default_rng(0).integers(150, 255, size=washed_out.shape[:3])
    out = biomarker_auc(status, ihc_patches, faithful, n_resamples=50)
    assert out["real"]["value"] == pytest.approx(1.0) and out["generated"]["value"] == pytest.approx(1.0)
    lost = biomarker_auc(status, ihc_patches, washed_out, n_resamples=50)
    assert lost["generated"]["value"] < 0.8
    with pytest.raises(MupdError, match="both classes"):
        biomarker_auc(np.zeros(len(status)), ihc_patches, faithful)
