"""Neighbouring-spot context for the finetuned regressor: neighbours come from the spot's own
section only and are its nearest spots (checked against scikit-learn), and a planted signal that
lives only in the neighbours is learnt with context and not without."""

from __future__ import annotations

import numpy as np
import pytest
from mupd.impute.finetune import fit_finetuned, predict_finetuned, spot_neighbours, spot_positions


def test_neighbours_are_the_nearest_spots_of_the_same_section(mini_table):
    from sklearn.neighbors import NearestNeighbors

    sections = np.asarray(mini_table.section)
    positions = spot_positions(mini_table.ids, mini_table.coords)
    assert positions.shape == (len(sections), 2) and (positions == np.round(positions)).all()  # her2st array x, y
    index, mask = spot_neighbours(sections, positions, k=4)
    assert mask.all() and (sections[index] == sections[:, None]).all()
    assert (index != np.arange(len(sections))[:, None]).all()
    for s in set(sections):
        rows = np.where(sections == s)[0]
        nn = NearestNeighbors(n_neighbors=5).fit(positions[rows])
        dist, _ = nn.kneighbors(positions[rows])
        mine = np.sqrt(((positions[index[rows]] - positions[rows, None]) ** 2).sum(-1))
        np.testing.assert_allclose(mine, dist[:, 1:])  # same distances (ties may pick other spots)
    # a section with fewer spots than k pads with the spot itself, masked out
    index, mask = spot_neighbours(["A", "A", "B"], np.array([[0, 0], [0, 1], [5, 5]]), k=2)
    assert mask.tolist() == [[True, False], [True, False], [False, False]] and index[2].tolist() == [2, 2]


def _planted(mini_table, seed=0):
    """Crops carrying a red square when the spot's bit is 1; the target is the mean bit of its 4
    neighbours (the bits are independent, so a spot's own crop says nothing about it)."""
    rng = np.random.default_rng(seed)
    images = mini_table.images.copy()
    bits = rng.integers(0, 2, len(images))
    images[bits == 1, 8:24, 8:24] = (230, 20, 20)
    sections = np.asarray(mini_table.section)
    index, mask = spot_neighbours(sections, spot_positions(mini_table.ids, mini_table.coords), k=4)
    target = bits[index].mean(1)
    return images, np.stack([target, -target], 1), sections, index, mask


def test_context_learns_a_signal_that_lives_in_the_neighbours(mini_table):
    """Trained on B4, scored on the held-out C5; the tower barely moves (lr 1e-4), the head learns."""
    from mupd.impute.features import untrained_encoder

    images, y, sections, _, _ = _planted(mini_table)
    ids = np.asarray(mini_table.ids)
    tower = untrained_encoder(images.shape[1], seed=0)
    sides = {}
    for name, rows in (("train", sections == "B4"), ("test", sections == "C5")):
        sides[name] = (rows, *spot_neighbours(sections[rows], spot_positions(ids[rows], None), 4))
    scores = {}
    for context in (None, "mean", "attention"):
        rows, index, mask = sides["train"]
        model, mean, std, _ = fit_finetuned(tower, images[rows], y[rows], epochs=15, batch_size=16, lr=1e-4, head_lr=1e-2,
                                            context=context, neighbours=index, neighbour_mask=mask)
        rows, index, mask = sides["test"]
        pred = predict_finetuned(model, mean, std, images[rows], index, mask)
        scores[context] = np.corrcoef(pred[:, 0], y[rows, 0])[0, 1]
    assert scores["mean"] > 0.6 and scores["attention"] > 0.6, scores
    assert abs(scores[None]) < 0.3, scores


def test_context_model_folder_round_trip_and_protocol_run(mini_table, tmp_path):
    from mupd.errors import MupdError
    from mupd.impute import protocols, runner
    from mupd.impute.model import SpotModel

    settings = runner.RunSettings(image_size=32, align_samples=64, finetune_epochs=1, context_pool="attention", context_k=3)
    model = SpotModel.fit("finetuned-context", mini_table, n_genes=8, settings=settings)
    assert model.config["context"]["pool"] == "attention" and model.config["context"]["k"] == 3
    before = model.predict(mini_table.images, mini_table)
    loaded = SpotModel.load(model.save(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(mini_table.images, mini_table), before, rtol=1e-5, atol=1e-6)
    with pytest.raises(MupdError, match="neighbouring spots"):
        loaded.predict(mini_table.images[:5])
    result = runner.run_protocol(protocols.get("her2st-lopo", n_genes=8), mini_table, methods=["finetuned-context"],
                                 settings=settings, progress=False)
    folds = result["methods"]["finetuned-context"]["folds"]
    assert len(folds) == 2 and all(f["context"]["k"] == 3 for f in folds)


def test_cli_trains_and_predicts_a_context_model(mini_her2st, tmp_path):
    import anndata

    from mupd.cli import main

    model = tmp_path / "ctx"
    assert main(["impute", "train", "--method", "finetuned-context", "--data", str(mini_her2st), "--sections", "B4",
                 "--genes", "6", "--align-samples", "64", "--epochs", "1", "--context-k", "3", "--out", str(model)]) == 0
    out = tmp_path / "c5.h5ad"
    assert main(["impute", "predict", str(model), "--data", str(mini_her2st), "--sections", "C5", "--out", str(out)]) == 0
    adata = anndata.read_h5ad(out)
    assert adata.shape == (48, 6) and '"k": 3' in adata.uns["mupd_impute"]["model_json"]
