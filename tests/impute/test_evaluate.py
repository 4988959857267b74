"""Per-gene metrics equal scipy / scikit-learn on the same arrays; fold summaries are not pooled."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_squared_error

from mupd.impute import evaluate, protocols


def test_gene_metrics_match_scipy_on_real_expression(mini_table):
    truth = protocols.normalised_panel(mini_table.counts, mini_table.genes, mini_table.genes[:60])
    rng = np.random.default_rng(0)
    pred = truth[rng.permutation(len(truth))] * 0.5 + truth * 0.5 + rng.normal(0, 0.3, truth.shape)
    m = evaluate.gene_metrics(truth, pred)
    ok = np.where(m["defined"])[0]
    assert len(ok) >= 50  # real counts: many ties (zeros), which Spearman must rank as scipy does
    for k in ok:
        assert np.isclose(m["pearson"][k], pearsonr(truth[:, k], pred[:, k])[0], atol=1e-10)
        assert np.isclose(m["spearman"][k], spearmanr(truth[:, k], pred[:, k])[0], atol=1e-10)
    np.testing.assert_allclose(m["mse"], mean_squared_error(truth, pred, multioutput="raw_values"))


def test_constant_prediction_has_undefined_r_counted_as_zero(mini_table):
    truth = protocols.normalised_panel(mini_table.counts, mini_table.genes, mini_table.genes[:10])
    m = evaluate.gene_metrics(truth, np.tile(truth.mean(0), (len(truth), 1)))
    assert not m["defined"].any() and (m["pearson"] == 0).all() and (m["spearman"] == 0).all()
    summary = evaluate.fold_summary(m, mini_table.genes[:10])
    assert summary["n_undefined"] == 10 and summary["fraction_r_positive"] == 0.0


def test_summary_is_over_folds_never_pooled():
    rng = np.random.default_rng(1)
    folds, pooled_t, pooled_p = [], [], []
    for offset in (0.0, 10.0):  # two folds whose levels differ: pooling would reward the offset
        t = rng.normal(size=(30, 3)) + offset
        p = rng.normal(size=(30, 3)) + offset
        folds.append(evaluate.fold_summary(evaluate.gene_metrics(t, p), ["a", "b", "c"]))
        pooled_t.append(t)
        pooled_p.append(p)
    s = evaluate.across_folds(folds)
    per_fold = [f["mean_pearson"] for f in folds]
    assert np.isclose(s["mean_pearson"]["mean"], np.mean(per_fold))
    assert np.isclose(s["mean_pearson"]["std"], np.std(per_fold, ddof=1))
    pooled = evaluate.gene_metrics(np.vstack(pooled_t), np.vstack(pooled_p))["pearson"].mean()
    assert pooled > 0.9 and abs(s["mean_pearson"]["mean"]) < 0.5
