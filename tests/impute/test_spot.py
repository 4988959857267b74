"""Spot-level read-outs on real crops and counts: the ridge equals scikit-learn's pipeline at the
chosen alpha, retrieval averages the nearest references, a model folder round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.impute import protocols, runner
from mupd.impute.features import pixel_features
from mupd.impute.model import SpotModel
from mupd.impute.retrieval import RetrievalIndex
from mupd.impute.ridge import RidgeReadout


def test_ridge_readout_equals_sklearn_pipeline_with_grouped_cv_alpha(mini_table):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = pixel_features(mini_table.images)
    y = protocols.normalised_panel(mini_table.counts, mini_table.genes, mini_table.genes[:20])
    readout = RidgeReadout(n_components=16).fit(x, y, mini_table.section)
    assert readout.alpha in readout.alphas and readout.cv.startswith("GroupKFold(2)")
    reference = make_pipeline(StandardScaler(), PCA(16, random_state=0), Ridge(alpha=readout.alpha)).fit(x, y)
    np.testing.assert_allclose(readout.predict(x), reference.predict(x), rtol=1e-4, atol=1e-4)


def test_retrieval_predicts_mean_of_nearest_reference_spots():
    rng = np.random.default_rng(0)
    ref = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(30, 8))), dim=-1).numpy()
    expr = rng.normal(size=(30, 5))
    query = ref[[3, 7]] + 1e-3
    pred = RetrievalIndex(ref, expr, k=4).predict(query)
    for row, q in zip(pred, query):
        top = np.argsort(-(ref @ (q / np.linalg.norm(q))))[:4]
        np.testing.assert_allclose(row, expr[top].mean(0))


def test_protocol_run_with_baselines_on_real_spots(mini_table):
    protocol = protocols.get("her2st-lopo", n_genes=30)
    result = runner.run_protocol(protocol, mini_table, methods=["mean", "pixels-ridge", "untrained-ridge"], progress=False)
    assert result["protocol"]["name"] == "her2st-lopo" and len(result["folds"]) == 2
    mean = result["methods"]["mean"]["summary"]
    assert mean["mean_pearson"]["mean"] == 0.0 and len(mean["mean_pearson"]["folds"]) == 2
    for m in ("pixels-ridge", "untrained-ridge"):
        folds = result["methods"][m]["folds"]
        assert all(f["alpha"] is not None and f["n_genes"] == 30 for f in folds)
        assert result["methods"][m]["summary"]["mean_mse"]["mean"] < 5 * mean["mean_mse"]["mean"]


@pytest.mark.parametrize("method", ["pixels-ridge", "aligned-retrieval", "finetuned"])
def test_model_folder_round_trip(mini_table, tmp_path, method):
    settings = runner.RunSettings(image_size=32, align_samples=64, n_components=8, retrieval_k=5, finetune_epochs=1)
    model = SpotModel.fit(method, mini_table, n_genes=12, settings=settings)
    before = model.predict(mini_table.images[:6])
    loaded = SpotModel.load(model.save(tmp_path / "m"))
    assert loaded.genes == model.genes and loaded.config["train_sections"] == ["B4", "C5"]
    np.testing.assert_allclose(loaded.predict(mini_table.images[:6]), before, rtol=1e-5, atol=1e-6)


def test_encoder_ridge_with_a_registry_encoder_saved_offline(mini_table, tmp_path):
    """(a) with a real registry class (a tiny random timm ViT saved like a foundation model's folder)."""
    import timm

    args = dict(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    timm.models.save_for_hf(vit, str(tmp_path / "vit"), model_args=args, safe_serialization=True)
    settings = runner.RunSettings(image_size=32, n_components=8, encoder="timm", encoder_path=str(tmp_path / "vit"))
    result = runner.run_protocol(protocols.get("her2st-lopo", n_genes=10), mini_table, methods=["encoder-ridge"],
                                 settings=settings, progress=False)
    assert result["settings"]["encoder"] == "timm" and len(result["methods"]["encoder-ridge"]["folds"]) == 2
    model = SpotModel.fit("encoder-ridge", mini_table, n_genes=10, settings=settings)
    loaded = SpotModel.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(mini_table.images[:4]), model.predict(mini_table.images[:4]), atol=1e-6)
    with pytest.raises(Exception, match="needs an encoder"):
        runner.run_protocol(protocols.get("her2st-lopo"), mini_table, methods=["encoder-ridge"], progress=False)
