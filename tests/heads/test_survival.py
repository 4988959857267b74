"""Survival statistics and losses against lifelines / scikit-survival, on real TCGA survival data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.heads.data import load_cohort
from mupd.heads.evaluate import c_index
from mupd.heads.survival import cox_loss, discretize, nll_survival_loss, risk_from_logits, time_bins


@pytest.fixture(scope="module")
def kirp(sample_data):
    return load_cohort(sample_data / "tcga" / "tcga_kirp_all_clean.csv.gz")


def test_c_index_equals_lifelines_and_sksurv(kirp):
    from lifelines.utils import concordance_index

    risk = kirp.expression[:, 0] + 0.5 * kirp.expression[:, 1]
    ours = c_index(kirp.time, risk, kirp.event)
    assert ours == pytest.approx(concordance_index(kirp.time, -risk, kirp.event), abs=1e-12)
    sksurv = pytest.importorskip("sksurv.metrics")
    theirs = sksurv.concordance_index_censored(kirp.event, kirp.time, risk)[0]
    assert ours == pytest.approx(theirs, abs=1e-3)  # they differ only in how tied times are counted
    assert c_index(kirp.time, -risk, kirp.event) == pytest.approx(1 - ours, abs=1e-3)


def test_cox_loss_equals_lifelines_partial_likelihood(kirp):
    import pandas as pd
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    time = kirp.time + rng.uniform(0, 1e-3, len(kirp.time))  # no ties: Breslow = Efron (lifelines' choice)
    x = kirp.expression[:, :3].astype(np.float64)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(T=time, E=kirp.event.astype(int))
    fitted = CoxPHFitter().fit(frame, "T", "E")
    risk = torch.as_tensor(x @ fitted.params_.to_numpy())
    ours = cox_loss(risk, torch.as_tensor(time), torch.as_tensor(kirp.event)).item() * kirp.event.sum()
    assert -ours == pytest.approx(fitted.log_likelihood_, rel=1e-6)


def test_cox_loss_ties_use_breslow_risk_sets():
    # Two deaths tied at t=1: each one's risk set holds all three patients (Breslow).
    risk = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    loss = cox_loss(risk, torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1, 1, 0])).item()
    log_sum = torch.logsumexp(risk, 0).item()
    assert loss == pytest.approx(-((0.3 - log_sum) + (-0.2 - log_sum)) / 2)


def test_nll_loss_is_the_discrete_time_likelihood():
    logits = torch.tensor([[0.2, -1.0, 0.5], [1.0, 0.0, -0.3]], dtype=torch.float64)
    h = torch.sigmoid(logits)
    s = torch.cumprod(1 - h, 1)
    # row 0: died in bin 1 -> S_0 * h_1 ; row 1: censored in bin 2 -> S_2
    expected = -(torch.log(s[0, 0] * h[0, 1]) + torch.log(s[1, 2])) / 2
    loss = nll_survival_loss(logits, torch.tensor([1, 2]), torch.tensor([1, 0]), alpha=0.0)
    assert loss.item() == pytest.approx(expected.item())
    assert torch.allclose(risk_from_logits(logits), -s.sum(1))


def test_time_bins_follow_uncensored_quantiles(kirp):
    edges = time_bins(kirp.time, kirp.event, 4)
    assert len(edges) == 3
    bins = discretize(kirp.time[kirp.event], edges)
    assert np.bincount(bins).min() >= kirp.event.sum() // 4 - 2


def test_step_survival_reads_the_discrete_curve_at_bin_starts():
    import pandas as pd

    from mupd.heads.evaluate import step_survival

    frame = pd.DataFrame({"surv_0": [0.9], "surv_1": [0.8], "surv_2": [0.7], "surv_3": [0.6],
                          "edge_1": [10.0], "edge_2": [20.0], "edge_3": [30.0]})
    assert step_survival(frame, [5, 10, 25, 40]).tolist() == [[1.0, 0.9, 0.8, 0.7]]
    assert step_survival(frame.drop(columns=["surv_0", "surv_1", "surv_2", "surv_3"]), [5]) is None


def test_pathway_token_head_attends_over_survpath_pathways(kirp, sample_data):
    from mupd.data.pathways import PathwayScorer
    from mupd.heads.fit import FitConfig, train_head
    from mupd.heads.models import build_head

    scorer = PathwayScorer.from_csv(sample_data / "genesets" / "combine_signatures.csv")
    head = build_head("pathway-tokens", len(kirp.genes), 4, genes=kirp.genes, pathways=scorer.pathways)
    x = torch.as_tensor(kirp.expression[:64])
    logits, attention = head(x, return_attention=True)
    assert logits.shape == (64, 4) and attention.shape == (64, len(scorer.names))
    assert torch.allclose(attention.sum(1), torch.ones(64), atol=1e-5)
    edges = time_bins(kirp.time, kirp.event, 4)
    target = {"bins": torch.as_tensor(discretize(kirp.time[:64], edges)), "event": torch.as_tensor(kirp.event[:64])}
    before = nll_survival_loss(head(x), target["bins"], target["event"]).item()
    train_head(head, x, target, "nll", FitConfig(epochs=5, lr=1e-2, batch_size=64))
    assert nll_survival_loss(head(x), target["bins"], target["event"]).item() < before
