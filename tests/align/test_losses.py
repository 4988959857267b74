from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mupd.align.losses import LogitScale, cosine_distillation_loss, info_nce, multi_pair_loss, same_text_positives
from mupd.errors import MupdError


def _direct_info_nce(a, b, scale):
    """Written out term by term: -log softmax of the positive, both directions, averaged."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = len(a)
    total = 0.0
    for i in range(n):
        row = [scale * float(a[i] @ b[j]) for j in range(n)]
        col = [scale * float(a[j] @ b[i]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    return total / (2 * n)


def test_info_nce_matches_direct_cross_entropy():
    a, b = torch.randn(6, 5), torch.randn(6, 5)
    assert float(info_nce(a, b, 3.0)) == pytest.approx(_direct_info_nce(a, b, 3.0), rel=1e-5)
    # and against torch's cross entropy with the logits built by hand
    logits = 3.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    torch.testing.assert_close(info_nce(a, b, 3.0), ref)


def test_info_nce_is_low_for_matched_pairs_and_symmetric():
    a = torch.randn(8, 16)
    assert float(info_nce(a, a, 50.0)) < 1e-3
    b = torch.randn(8, 16)
    torch.testing.assert_close(info_nce(a, b, 10.0), info_nce(b, a, 10.0))
    with pytest.raises(MupdError, match="pairs must align"):
        info_nce(a, b[:5], 1.0)


def test_logit_scale_starts_at_clip_value_and_is_clamped():
    scale = LogitScale()
    assert float(scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert float(scale().detach()) == pytest.approx(100.0, rel=1e-5)
    loss = info_nce(torch.randn(4, 3), torch.randn(4, 3), LogitScale()())
    loss.backward()  # the temperature is learnable through the loss


def test_multi_pair_loss_uses_only_samples_with_both_modalities():
    emb = {"image": torch.randn(6, 4), "rna": torch.randn(6, 4), "text": torch.randn(6, 4)}
    present = {"text": torch.tensor([True, True, True, False, False, False])}
    loss, parts = multi_pair_loss(emb, 5.0, present=present)
    assert set(parts) == {"image-rna", "image-text", "rna-text"}
    assert parts["image-text"] == pytest.approx(float(info_nce(emb["image"][:3], emb["text"][:3], 5.0)), rel=1e-6)
    assert float(loss) == pytest.approx(sum(parts.values()) / 3, rel=1e-6)


def test_cosine_distillation_respects_mask():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    t2 = t.clone()
    t2[0, 2] = 100.0  # padding: must not matter
    torch.testing.assert_close(cosine_distillation_loss(s, t, mask), cosine_distillation_loss(s, t2, mask))
    assert float(cosine_distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_extra_positives_spread_the_target():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    none = torch.zeros(4, 4, dtype=torch.bool)
    torch.testing.assert_close(info_nce(a, b, 2.0, none), info_nce(a, b, 2.0))
    pos = same_text_positives(["tumour", "Tumour ", "normal", "stroma"])
    assert pos.int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    logits = 2.0 * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    # row 0 and 1: target 1/2 on each of columns 0, 1; written out with log-softmax
    logp, logp_t = logits.log_softmax(1), logits.T.log_softmax(1)
    rows = [-(logp[0, 0] + logp[0, 1]) / 2, -(logp[1, 0] + logp[1, 1]) / 2, -logp[2, 2], -logp[3, 3]]
    cols = [-(logp_t[0, 0] + logp_t[0, 1]) / 2, -(logp_t[1, 0] + logp_t[1, 1]) / 2, -logp_t[2, 2], -logp_t[3, 3]]
    expected = (sum(rows) / 4 + sum(cols) / 4) / 2
    torch.testing.assert_close(info_nce(a, b, 2.0, pos), expected)
