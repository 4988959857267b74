"""MIL heads on PCam slide-like bags: frozen tile features, padding, the attention report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mupd.heads.bags import pcam_bags, run_pcam_mil, tile_features
from mupd.heads.data import pad_bags
from mupd.heads.models import build_head


@pytest.fixture(scope="module")
def bags(sample_data):
    return pcam_bags(sample_data / "pcam", n_bags=20, bag_size=8, seed=1)


def test_bags_hold_distinct_patches_and_follow_the_mil_label(bags):
    tiles, flags, labels = bags
    assert tiles.shape == (20, 8, 96, 96, 3) and tiles.dtype == np.uint8
    assert np.array_equal(flags.any(1), labels.astype(bool))  # positive = at least one tumour tile
    flat = tiles.reshape(len(tiles) * 8, -1)
    assert len({row.tobytes() for row in flat}) == len(flat)  # no patch used twice


def test_tile_features_separate_tumour_from_normal_tiles(sample_data):
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    paths = [sorted((sample_data / "pcam" / "valid" / c).glob("*.jpg"))[:60] for c in ("0", "1")]
    tiles = np.stack([np.asarray(Image.open(p).convert("RGB")) for group in paths for p in group])
    x, y = tile_features(tiles), np.repeat([0, 1], 60)
    x = (x - x.mean(0)) / x.std(0)
    auc = cross_val_score(LogisticRegression(max_iter=2000), x, y, scoring="roc_auc", cv=5).mean()
    assert auc > 0.7, auc  # chance is 0.5


@pytest.mark.parametrize("head", ["abmil", "transmil"])
def test_padding_does_not_change_a_bag_prediction(head):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    x, mask = pad_bags([small, large])
    model = build_head(head, 16, 2, hidden=16).eval()
    together = model(torch.as_tensor(x), torch.as_tensor(mask))
    alone = model(torch.as_tensor(small)[None], torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def test_pcam_mil_run_writes_metrics_and_attention_map(sample_data, tmp_path):
    from mupd.heads.crossval import HeadSpec
    from mupd.heads.fit import FitConfig

    spec = HeadSpec(head="abmil", loss="ce", hidden=32, fit=FitConfig(epochs=10, batch_size=8))
    summary = run_pcam_mil(tmp_path, pcam=sample_data / "pcam", spec=spec, n_bags=24, bag_size=6, folds=3)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["metrics"]["macro_auc"]["n"] == 3 and 0 <= summary["top_attention_is_tumour"] <= 1
    assert (tmp_path / "attention.png").stat().st_size > 20_000
    assert "attention.png" in (tmp_path / "report.html").read_text()
