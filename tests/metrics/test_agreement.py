"""Conditional agreement (image/text/RNA), retrieval Recall@K, and the few-shot probe on real PCam patches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from mupd.errors import MupdError
from mupd.metrics.fewshot import few_shot
from mupd.metrics.retrieval import recall_at_k
from mupd.metrics.similarity import image_similarity, per_gene_pearson, rna_agreement, text_image_alignment


def test_image_and_text_similarity():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 16))
    assert image_similarity(ref, ref * 3.0)["cosine"]["value"] == pytest.approx(1.0)  # scale-invariant
    noisy = image_similarity(ref + rng.normal(scale=1.0, size=ref.shape), ref)["cosine"]
    assert 0.3 < noisy["value"] < 0.95 and noisy["low"] <= noisy["value"] <= noisy["high"]
    text = ref + rng.normal(scale=0.1, size=ref.shape)
    aligned = text_image_alignment(ref, text)
    assert aligned["top1"] == 1.0 and aligned["cosine"]["value"] > 0.95
    assert text_image_alignment(ref, rng.normal(size=ref.shape))["cosine"]["value"] < 0.3
    with pytest.raises(MupdError, match="equal shapes"):
        image_similarity(ref, ref[:, :8])


def test_rna_agreement_per_gene_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    expression = rng.normal(size=(50, 6))
    images = rng.normal(size=(50, 12))
    weights = np.zeros((12, 6))
    weights[:6, :6] = np.eye(6)
    regressor = lambda x: x @ weights  # noqa: E731 - "predicts" genes from image features
    images[:, :3] = expression[:, :3] + rng.normal(scale=0.3, size=(50, 3))  # genes 0-2 recoverable, 3-5 not
    out = rna_agreement(images, expression, regressor, genes=[f"G{i}" for i in range(6)], n_resamples=20)
    r = per_gene_pearson(regressor(images), expression)
    assert r == pytest.approx([pearsonr(regressor(images)[:, g], expression[:, g])[0] for g in range(6)], rel=1e-9)
    assert all(v > 0.8 for v in r[:3]) and all(abs(v) < 0.5 for v in r[3:])
    assert {t["gene"] for t in out["top_genes"][:3]} == {"G0", "G1", "G2"}
    with pytest.raises(MupdError, match="NaN"):
        per_gene_pearson(np.full((3, 2), np.nan), np.ones((3, 2)))


def test_recall_at_k_known_answers():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 8))
    paired = recall_at_k(gallery + 1e-3 * rng.normal(size=gallery.shape), gallery, ks=(1, 5))
    assert paired["recall@1"]["value"] == 1.0 and paired["mode"] == "paired"
    # a query whose true match is ranked 3rd: missed at K=1, found at K=5
    q = gallery[:1] * 0.0 + gallery[5]
    gal = np.stack([gallery[5], gallery[5] * 0.99 + 0.01, gallery[0] * 0.2 + gallery[5]])
    labels = recall_at_k(q, gal, query_labels=["a"], gallery_labels=["b", "b", "a"], ks=(1, 3))
    assert labels["recall@1"]["value"] == 0.0 and labels["recall@3"]["value"] == 1.0


def _handcrafted_features(images: np.ndarray) -> np.ndarray:
    """Frozen, training-free features: per-channel mean/std of RGB and of the H, E, D stain densities."""
    from skimage.color import rgb2hed

    out = []
    for im in images:
        hed = rgb2hed(im)
        out.append(np.concatenate([im.reshape(-1, 3).mean(0) / 255, im.reshape(-1, 3).std(0) / 255,
                                   hed.reshape(-1, 3).mean(0), hed.reshape(-1, 3).std(0)]))
    return np.asarray(out)


def test_few_shot_on_pcam_features_end_to_end(sample_data):
    from mupd.metrics.images import load_image_set

    train = load_image_set(sample_data / "pcam" / "train", max_images=60, seed=1)
    test = load_image_set(sample_data / "pcam" / "valid", max_images=80, seed=2)
    tx, vx = (_handcrafted_features(s.images.permute(0, 2, 3, 1).numpy()) for s in (train, test))
    ty, vy = np.array(train.labels), np.array(test.labels)
    # "synthetic" stand-in: other real training patches (no generator in this slice); labelled by folder
    extra = load_image_set(sample_data / "pcam" / "train", max_images=40, seed=3)
    sx, sy = _handcrafted_features(extra.images.permute(0, 2, 3, 1).numpy()), np.array(extra.labels)
    out = few_shot(tx, ty, vx, vy, shots=(1, 5, 10), seeds=range(4), synthetic_features=sx, synthetic_labels=sy, n_resamples=50)
    assert out["classes"] == ["0", "1"] and out["seeds"] == 4 and out["n_synthetic"] == 40
    for k in ("1", "5", "10"):
        for arm in ("real", "real+synthetic"):
            ba = out["results"][k][arm]["balanced_accuracy"]
            assert 0.0 <= ba["low"] <= ba["value"] <= ba["high"] <= 1.0
    # more labels help: 10-shot + 40 extra labelled patches beats 1-shot (handcrafted colour features carry signal)
    assert out["results"]["10"]["real+synthetic"]["auc"]["value"] > out["results"]["1"]["real"]["auc"]["value"]
    assert out["results"]["10"]["real+synthetic"]["auc"]["value"] > 0.6
    with pytest.raises(MupdError, match="fewer than"):
        few_shot(tx, ty, vx, vy, shots=(100,), seeds=range(1))
