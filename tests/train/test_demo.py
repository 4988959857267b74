"""``mupd demo`` end to end on real PCam patches at a tiny budget: every output is written and the
checkpoint is a loadable pipeline folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mupd.errors import MupdError
from mupd.train.demo import find_data, run_demo


def test_demo_writes_samples_metrics_report_and_checkpoint(sample_data, tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(minutes=0.2, out=out, device="cpu", image_size=32, seed=0, progress=False, eval_samples=16, sample_steps=6)
    assert summary["out"] == str(out)
    grid = Image.open(out / "samples.png")
    assert grid.width > 8 * 32 and grid.height >= 4 * 32  # 2 classes x (real row + generated row), 8 per row
    metrics = json.loads((out / "metrics.json").read_text())
    ev = metrics["evaluation"]
    assert ev["feature_extractor"]["name"] in ("inception", "random-inception")
    assert ev["generated_vs_real"]["n_fake"] == 16 and ev["generated_vs_real"]["fid"]["value"] >= 0
    assert metrics["generator"]["images_seen"] > 0 and metrics["autoencoder"]["images_seen"] > 0
    assert metrics["data"]["classes"] == {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}
    assert "samples" in (out / "report.html").read_text().lower()

    from mupd.bundle import load_bundle

    bundle = load_bundle(out / "checkpoint")
    assert bundle.index["labels"]["1"] == "lymph node, metastatic tumour"
    assert bundle.model.config.modalities == ("text",) and "text" in bundle.encoders
    assert (out / "checkpoint" / "train_state" / "state.json").exists()


def test_demo_says_what_it_needs_without_data(monkeypatch, tmp_path):
    import importlib

    # (``mupd.settings`` the attribute is the settings object; the module is in sys.modules)
    monkeypatch.setattr(importlib.import_module("mupd.settings"), "sample_data_dir", lambda: None)
    with pytest.raises(MupdError, match="MUPD_SAMPLE_DATA.*--data FOLDER"):
        find_data(None, 0)
    with pytest.raises(MupdError, match="is not a folder"):
        find_data(str(tmp_path / "nowhere"), 0)
