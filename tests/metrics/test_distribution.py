"""FID / KID / precision-recall against references: scipy's closed form, torchmetrics, explicit MMD."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from mupd.errors import MupdError
from mupd.metrics.distribution import fid_kid, frechet_distance, kernel_distance, prdc, precision_recall


def _sets(n_real=120, n_fake=90, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    real = rng.normal(size=(n_real, dim)) @ mix
    fake = (rng.normal(size=(n_fake, dim)) * 1.2 + 0.3) @ mix
    return real, fake


def _scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


class _Identity(torch.nn.Module):
    """Lets torchmetrics' FID/KID take precomputed features as its 'images'."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


@pytest.mark.parametrize("n_real,n_fake,dim", [(120, 90, 32), (40, 30, 64)])  # n > D and n < D (rank-deficient)
def test_fid_equals_scipy_closed_form(n_real, n_fake, dim):
    real, fake = _sets(n_real, n_fake, dim)
    assert frechet_distance(real, fake) == pytest.approx(_scipy_fid(real, fake), rel=1e-6, abs=1e-8)


def test_fid_equals_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _sets()
    metric = FrechetInceptionDistance(feature=_Identity(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    real, _ = _sets()
    assert abs(frechet_distance(real, real)) < 1e-8
    assert frechet_distance(real, real + 1.0) == pytest.approx(real.shape[1] * 1.0, rel=1e-6)  # ||mu shift||^2


def _explicit_kid(a, b):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written out with loops over pairs."""
    d = a.shape[1]
    k = lambda x, y: (x @ y / d + 1.0) ** 3  # noqa: E731
    m = len(a)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_equals_explicit_polynomial_mmd():
    real, fake = _sets(30, 30, 16)
    mean, std = kernel_distance(real, fake, subsets=3, subset_size=30)
    assert std == 0.0  # every subset is the whole set
    assert mean == pytest.approx(_explicit_kid(real, fake), rel=1e-9)


def test_kid_subsets_equal_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = _sets(60, 60, 16)
    ours, _ = kernel_distance(real, fake, subsets=20, subset_size=20, seed=0)
    metric = KernelInceptionDistance(feature=_Identity(16), subsets=20, subset_size=20)
    metric.set_dtype(torch.float64)
    metric.update(torch.tensor(real), real=True)
    metric.update(torch.tensor(fake), real=False)
    tm_mean, _ = metric.compute()
    # different random subsets: the two estimates agree within the subset spread
    assert ours == pytest.approx(float(tm_mean), abs=0.05 * abs(ours) + 0.05)


def test_fid_kid_intervals_bracket_the_value_and_state_resamples():
    real, fake = _sets(80, 80, 16)
    out = fid_kid(real, fake, min_samples=50, n_resamples=40)
    for name in ("fid", "kid"):
        assert out[name]["low"] <= out[name]["value"] <= out[name]["high"]
        assert out[name]["n_resamples"] == 40
    assert out["fid"]["value"] == pytest.approx(_scipy_fid(real, fake), rel=1e-6)


def test_fid_refuses_small_sets_and_mismatched_widths():
    real, fake = _sets(30, 30, 8)
    with pytest.raises(MupdError, match="at least 50"):
        fid_kid(real, fake)
    assert fid_kid(real, fake, min_samples=20, n_resamples=5)["n_real"] == 30  # the override works
    with pytest.raises(MupdError, match="same extractor"):
        fid_kid(real, fake[:, :4], min_samples=2)
    with pytest.raises(MupdError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), fake[:5, :3])


def test_precision_recall_known_answers():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(100, 8))
    same = precision_recall(real, real.copy())
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = precision_recall(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # a generator that collapsed onto one real cluster: precise but with poor recall
    collapsed = real[:10].repeat(10, axis=0) + rng.normal(scale=1e-3, size=(100, 8))
    pr = precision_recall(real, collapsed)
    assert pr["precision"] == 1.0 and pr["recall"] < 0.5
    with_ci = prdc(real, collapsed, n_resamples=50)
    assert with_ci["recall"]["low"] <= with_ci["recall"]["value"] <= with_ci["recall"]["high"] and with_ci["k"] == 3
