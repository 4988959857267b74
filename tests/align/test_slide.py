"""Slide-level alignment (mSTAR stage 1 / TANGLE) and stage-2 self-taught distillation on PCam bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mupd.align.mil import GatedABMIL
from mupd.align.slide import SelfTaughtDistiller, SlideAligner, patch_features
from mupd.align.towers import SmallImageTower, SmallTextTower, WordVocabulary


@pytest.fixture(scope="module")
def bags(sample_data):
    """4 pseudo-slides of 6 real PCam patches each (2 normal, 2 tumour), 32 px."""
    out, labels = [], []
    for label in (0, 1):
        files = sorted((sample_data / "pcam" / "train" / str(label)).glob("*.jpg"))[:12]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files]
        for start in (0, 6):
            out.append(np.stack(arrays[start: start + 6]))
            labels.append(label)
    return torch.from_numpy(np.stack(out)).permute(0, 1, 4, 2, 3).contiguous(), labels


def test_slide_level_alignment_with_variable_bags(bags):
    patches, labels = bags
    encoder = SmallImageTower(width=16, embed_dim=8, image_size=32)
    with torch.no_grad():
        features = patch_features(encoder, patches)
    assert features.shape == (4, 6, 16)
    reports = ["normal lymph node" if y == 0 else "metastatic tumour in lymph node" for y in labels]
    text = SmallTextTower(WordVocabulary.build(reports), width=16, embed_dim=8, depth=1)
    for aggregator in ("abmil", "transmil"):
        model = SlideAligner(16, {"text": text}, aggregator=aggregator, hidden=16, embed_dim=8)
        mask = torch.ones(4, 6, dtype=torch.bool)
        mask[0, 3:] = False  # bags of different sizes in one batch
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(8):
            loss, parts = model.loss(features, mask, {"text": reports})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert set(parts) == {"slide-text"} and losses[-1] < losses[0]


def test_stage2_distillation_loss_decreases(bags):
    patches, _ = bags
    torch.manual_seed(0)
    student = SmallImageTower(width=16, embed_dim=8, image_size=32)
    aggregator = GatedABMIL(16, hidden=12, attention_dim=8, out_dim=8)  # stands in for a stage-1 aggregator
    distiller = SelfTaughtDistiller(student, aggregator, ema_decay=0.9)
    frozen = {k: v.clone() for k, v in aggregator.state_dict().items()}
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=3e-3)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    losses = []
    for _ in range(12):
        loss = distiller.loss(patches, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        distiller.update_teacher()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    for key, value in aggregator.state_dict().items():  # the aggregator stays frozen
        torch.testing.assert_close(value, frozen[key])
    assert not any(p.requires_grad for p in distiller.teacher.parameters())
