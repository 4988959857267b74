from __future__ import annotations

import numpy as np
import pytest
import torch

from mupd.align.evaluate import (chance_recall, check_disjoint, linear_probe_accuracy, recall_at_k, ridge_gene_pearson,
                                 zero_shot_accuracy)
from mupd.errors import MupdError


def test_recall_at_k_known_answers():
    gallery = torch.eye(4)
    # query 0 -> its match ranks 1st; query 1 -> 2nd; query 2 -> 3rd; query 3 -> 4th
    queries = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.9, 0, 0], [1.0, 0.9, 0.8, 0], [1.0, 0.9, 0.8, 0.7]])
    assert recall_at_k(queries, gallery, ks=(1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    assert recall_at_k(gallery, gallery, ks=(1,)) == {1: 1.0}
    # ties count against the match (a constant embedding retrieves nothing for free)
    assert recall_at_k(torch.ones(4, 2), torch.ones(4, 2), ks=(1, 3)) == {1: 0.0, 3: 0.0}
    assert chance_recall(100, 10) == 0.1
    with pytest.raises(MupdError, match="paired"):
        recall_at_k(torch.ones(3, 2), torch.ones(4, 2))


def test_zero_shot_and_linear_probe_on_separable_toy():
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    assert zero_shot_accuracy(emb, prompts, [0, 1, 0, 1]) == 1.0
    assert zero_shot_accuracy(emb, prompts, [1, 0, 1, 0]) == 0.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = (x[:, 0] > 0).astype(int)
    assert linear_probe_accuracy(x[:60], y[:60], x[60:], y[60:]) >= 0.95


def test_ridge_pearson_and_group_split():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    y = x @ rng.normal(size=(4, 3))
    r = ridge_gene_pearson(x[:40], y[:40], x[40:], y[40:], alpha=1e-6)
    np.testing.assert_allclose(r, 1.0, atol=1e-6)
    check_disjoint(["B4", "C2"], ["C5"])
    with pytest.raises(MupdError, match="share 1 group"):
        check_disjoint(["B4", "C5"], ["C5"])
