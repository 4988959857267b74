"""Slide-level presets of ``mupd align train`` (tangle-slide / mstar-slide / mstar-distill) on real her2st
pseudo-slides, and the collapse guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mupd.align.collapse import CollapseGuard, embedding_health
from mupd.align.config import preset
from mupd.align.slide_data import load_slides
from mupd.align.slide_eval import evaluate_slides
from mupd.align.slide_train import build_slide_model, load_slide_model, load_tile_encoder, train_slide
from mupd.cli import main
from mupd.errors import MupdError


@pytest.fixture(scope="module")
def pcam_slides(sample_data):
    """80 training bags of 8 PCam train patches, 80 held-out bags from PCam valid (other slides); stain features."""
    config = preset("tiny-pcam-slide")
    return config, load_slides(config, "train"), load_slides(config, "test")


def test_presets_print_resolved_config(capsys):
    for name in ("tangle-slide", "mstar-slide", "mstar-distill", "tangle-pcam"):
        assert main(["align", "train", "--preset", name, "--dry-run", "--set", "lr=0.002"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["name"] == name and printed["dataset"].endswith("-slides") and printed["lr"] == 0.002
        assert printed["collapse_patience"] >= 1 and "collapse_min_rank" in printed
    assert main(["align", "train", "--preset", "mstar-slide", "--dry-run", "--set", "pairs=[[image,rna]]"]) == 2
    assert "slide/text/rna" in capsys.readouterr().err
    assert main(["align", "train", "--preset", "mstar-distill", "--out", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "stage1" in err and "\n" not in err


def test_health_measures():
    torch.manual_seed(0)
    spread = embedding_health(torch.randn(64, 16))
    assert spread["std"] > 0.8 and spread["rank"] > 10
    point = embedding_health(torch.ones(64, 16) + 1e-7 * torch.randn(64, 16))
    assert point["std"] < 1e-3 and point["rank"] < 1.01
    line = embedding_health(torch.randn(64, 1) * torch.ones(1, 16))  # +-one direction: spread but rank 1
    assert line["rank"] < 1.01
    offset = embedding_health(torch.rand(64, 16) + 5.0)  # a shared offset (ReLU-like features) is not collapse
    assert offset["rank"] > 8
    # effective rank = exp(entropy) of the normalised singular values of the centred batch, checked with numpy
    z = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1).numpy()
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / s.sum()
    assert embedding_health(torch.from_numpy(z))["rank"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-5)
    guard = CollapseGuard(min_std=0.05, min_rank=1.5, patience=2, hint="try a lower lr")
    guard.check(1, 8, {"slide": torch.randn(8, 4)})
    guard.check(2, 16, {"slide": torch.ones(8, 4)})
    assert not guard.healthy
    guard.check(3, 24, {"slide": torch.randn(8, 4)})  # a healthy check resets the streak
    guard.check(4, 32, {"slide": torch.ones(8, 4)})
    with pytest.raises(MupdError, match=r"collapse detected at step 5 \(40 samples\).*slide embedding std 0 .*lower lr"):
        guard.check(5, 40, {"slide": torch.ones(8, 4)})


def test_planted_collapse_stops_and_keeps_the_last_healthy_checkpoint(pcam_slides, tmp_path):
    config, train, _ = pcam_slides
    out = tmp_path / "run"
    train_slide(preset("tiny-pcam-slide", total_samples=64, checkpoint_every=16), out, train, progress=False)
    healthy = json.loads((out / "trainer_state.json").read_text())["samples_seen"]
    assert healthy == 64
    # A projector forced to a constant: every slide maps to one point.
    model = build_slide_model(config, train)
    with torch.no_grad():
        model.aggregator.out.weight.zero_()
    model.aggregator.out.weight.requires_grad_(False)
    with pytest.raises(MupdError) as err:
        train_slide(preset("tiny-pcam-slide", checkpoint_every=16), out, train, model=model, progress=False)
    message = str(err.value)
    assert "collapse detected at step 3 (48 samples)" in message and "effective rank 1 " in message
    assert "lower lr (now 0.003)" in message and "\n" not in message
    # nothing was written once the collapse began: the earlier healthy checkpoint is intact
    assert json.loads((out / "trainer_state.json").read_text())["samples_seen"] == healthy
    load_slide_model(out)


def test_normal_run_does_not_trip_the_guard_and_learns(pcam_slides, tmp_path):
    """Bag <-> report alignment on PCam train; held-out PCam valid bags: zero-shot metastasis calls from
    the text tower, and a linear head (mupd.heads, 3-fold) on the frozen slide embeddings."""
    config, train, test = pcam_slides
    model = train_slide(config, tmp_path / "s1", train, progress=False)
    state = json.loads((tmp_path / "s1" / "trainer_state.json").read_text())
    assert state["samples_seen"] == config.total_samples and state["history"][-1]["health"]["slide"]["rank"] > 2
    metrics = evaluate_slides(model, train, test, folds=3)
    assert metrics["test_groups"] == ["pcam-test"] and metrics["n_test_bags"] == 80
    assert metrics["zero_shot_tumour"] >= 0.6, metrics  # 80 bags, chance 0.5 (seed 0: 0.66)
    heads = metrics["heads_linear"]
    assert heads["slide_embedding"]["tumour"]["macro_auc"] >= 0.65, heads  # seed 0: 0.74; bag-mean features 0.63
    saved, _, _ = load_slide_model(tmp_path / "s1")
    torch.testing.assert_close(saved.embed_slides(test.features[:4], test.mask[:4]),
                               model.embed_slides(test.features[:4], test.mask[:4]))


def test_her2st_tri_modal_stage1_then_stage2_distillation(sample_data, tmp_path, capsys):
    """mstar-slide-like tri-modal run (bag <-> bulk RNA <-> report) and mSTAR stage 2 through the CLI."""
    stage1, stage2 = tmp_path / "s1", tmp_path / "s2"
    assert main(["align", "train", "tiny-slide", "--out", str(stage1), "--no-progress", "--set", "total_samples=64",
                 "pairs=[[slide,rna],[slide,text],[rna,text]]", "bags_per_section=16"]) == 0
    metrics = json.loads((stage1 / "metrics.json").read_text())
    assert metrics["test_groups"] == ["C5"] and {"slide->rna", "slide->report_top1", "rna_readout"} <= set(metrics)
    model, config, saved = load_slide_model(stage1)
    assert set(model.towers) == {"rna", "text"} and "ERBB2" in saved["report_rule"]
    before = load_tile_encoder(stage1, config)
    assert main(["align", "train", "mstar-distill", "--out", str(stage2), "--no-progress", "--set", f"stage1={stage1}",
                 "total_samples=32", "batch_size=8", "bags_per_section=16"]) == 0
    distilled = json.loads((stage2 / "metrics.json").read_text())
    assert set(distilled) == {"before", "after"} and "rna_readout" in distilled["after"]
    after = load_tile_encoder(stage2, config)
    changed = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(changed)
    # the stage-1 folder (aggregator, towers) is untouched by stage 2
    reloaded, _, _ = load_slide_model(stage1)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    capsys.readouterr()
    assert main(["align", "evaluate", str(stage1)]) == 0  # rebuilt from the folder alone: same held-out numbers
    assert json.loads(capsys.readouterr().out)["slide->rna"] == metrics["slide->rna"]
    assert main(["align", "train", "mstar-distill", "--out", str(tmp_path / "x"), "--set", f"stage1={tmp_path}"]) == 2
    assert "stage1" in capsys.readouterr().err
