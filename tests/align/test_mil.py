from __future__ import annotations

import pytest
import torch

from mupd.align.mil import GatedABMIL, TransMIL, build_aggregator
from mupd.errors import MupdError


@pytest.mark.parametrize("name", ["abmil", "transmil"])
def test_shapes_and_padding_never_matters(name):
    model = build_aggregator(name, 12, hidden=16, out_dim=8).eval()
    x = torch.randn(3, 9, 12)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    out = model(x, mask)
    assert out.shape == (3, 8)
    assert model.token_features(x, mask).shape == (3, 9, 16)
    noisy = x.clone()
    noisy[~mask] = 1e3  # garbage in padding positions
    torch.testing.assert_close(model(noisy, mask), out)
    # a padded bag gives the same slide embedding as the bag alone (variable bag sizes in one batch)
    torch.testing.assert_close(model(x[1:2, :5]), out[1:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x[2:3, :2]), out[2:3], atol=1e-5, rtol=1e-5)


def test_abmil_is_permutation_invariant_and_attention_sums_to_one():
    model = GatedABMIL(10, hidden=16, attention_dim=8, out_dim=4).eval()
    x = torch.randn(2, 7, 10)
    out, attention = model(x, return_attention=True)
    perm = torch.randperm(7)
    torch.testing.assert_close(model(x[:, perm]), out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention.sum(1), torch.ones(2))


def test_transmil_trains():
    model = TransMIL(6, hidden=16, heads=2, out_dim=3)
    x = torch.randn(4, 5, 6)
    model(x).sum().backward()
    assert model.cls.grad is not None and model.ppeg.convs[0].weight.grad is not None


def test_bad_bags_are_refused():
    model = GatedABMIL(4, hidden=8)
    with pytest.raises(MupdError, match=r"\(B, N, D\)"):
        model(torch.randn(5, 4))
    with pytest.raises(MupdError, match="at least one real patch"):
        model(torch.randn(2, 3, 4), torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(MupdError, match="does not match"):
        model(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(MupdError, match="unknown aggregator"):
        build_aggregator("maxpool", 4)
