"""``mupd demo`` end to end on real PCam patches at a tiny budget: every output is written and the
checkpoint is a loadable pipeline folder."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mupd.encoders import taesd
from mupd.encoders.taesd import find_taef2
from mupd.errors import MupdError
from mupd.train.demo import DEMO_SAMPLER, demo_sampler, find_data, resolve_autoencoder, run_demo


@pytest.mark.parametrize("autoencoder", ["taef2", "trained"])
def test_demo_writes_samples_metrics_report_and_checkpoint(sample_data, tmp_path, autoencoder):
    if autoencoder == "taef2" and find_taef2(required=False) is None:
        pytest.skip("TAEF2 weights not found: set MUPD_MODELS")
    out = tmp_path / "demo"
    summary = run_demo(minutes=0.1, out=out, device="cpu", image_size=32, seed=0, progress=False, eval_samples=16,
                       sample_steps=4, autoencoder=autoencoder, train_patches=64, classifier_steps=20,
                       sampler={"schedule": "time_shift", "shift": 2.0})
    assert summary["out"] == str(out)
    grid = Image.open(out / "samples.png")
    assert grid.width > 8 * 32 and grid.height >= 4 * 32  # 2 classes x (real row + generated row), 8 per row
    metrics = json.loads((out / "metrics.json").read_text())
    ae, ev = metrics["autoencoder"], metrics["evaluation"]
    assert ae["kind"] == autoencoder and ("MIT" in ae["which"]) == (autoencoder == "taef2")
    assert ae["latent_shape"] == ([32, 4, 4] if autoencoder == "taef2" else [4, 8, 8])
    assert ev["feature_extractor"]["name"] == "demo-classifier"
    assert ev["generated_vs_real"]["n_fake"] == 16 and ev["generated_vs_real"]["n_real"] == 16
    floor = ev["autoencoder_reconstructions_vs_real"]["fid"]
    assert floor["low"] <= floor["value"] <= floor["high"]
    recognised = ev["class_recognition"]["generated"]
    assert 0 <= recognised["low"] <= recognised["value"] <= recognised["high"] <= 1
    assert set(ev["class_recognition"]["generated_per_class"]) == {"0", "1"}
    assert "FID measures" in ev["summary"] and "classifier recognises" in ev["summary"]
    # the numbers in the sentence are the report's, to three significant digits (1.0264 is not "1")
    assert f"generated patches {ev['generated_vs_real']['fid']['value']:.3g}," in ev["summary"]
    assert metrics["generator"]["images_seen"] > 0
    assert metrics["generator"]["sampler"] == {**DEMO_SAMPLER, "steps": 4, "schedule": "time_shift", "shift": 2.0}
    assert metrics["data"]["classes"] == {"0": "lymph node, normal tissue", "1": "lymph node, metastatic tumour"}
    page = (out / "report.html").read_text()
    assert "requested class recognised" in page and ev["summary"].split(":")[0] in page

    from mupd.bundle import load_bundle

    bundle = load_bundle(out / "checkpoint")  # the pipeline folder holds whichever autoencoder kind was used
    assert bundle.vae.kind == {"taef2": "taef2", "trained": "kl"}[autoencoder]
    assert bundle.index["labels"]["1"] == "lymph node, metastatic tumour"
    assert bundle.model.config.modalities == ("text",) and "text" in bundle.encoders
    assert (out / "checkpoint" / "train_state" / "state.json").exists()


def test_autoencoder_choice(monkeypatch):
    assert resolve_autoencoder("trained")[0] == "trained"
    with pytest.raises(MupdError, match="--autoencoder must be one of auto, taef2, trained"):
        resolve_autoencoder("sd")
    monkeypatch.setattr(taesd, "models_dirs", lambda: [])
    kind, folder, line = resolve_autoencoder("auto")  # no TAEF2 on disk: falls back and says why
    assert (kind, folder) == ("trained", None) and "MUPD_MODELS" in line
    with pytest.raises(MupdError, match="TAEF2 autoencoder weights were not found"):
        resolve_autoencoder("taef2")


def test_demo_says_what_it_needs_without_data(monkeypatch, tmp_path):
    import importlib

    # (``mupd.settings`` the attribute is the settings object; the module is in sys.modules)
    monkeypatch.setattr(importlib.import_module("mupd.settings"), "sample_data_dir", lambda: None)
    with pytest.raises(MupdError, match="MUPD_SAMPLE_DATA.*--data FOLDER"):
        find_data(None, 0)
    with pytest.raises(MupdError, match="is not a folder"):
        find_data(str(tmp_path / "nowhere"), 0)


def test_demo_sampler_overrides_and_rejects_bad_options_before_loading(tmp_path):
    assert demo_sampler() == DEMO_SAMPLER
    assert DEMO_SAMPLER["guidance"] == 3.0 and DEMO_SAMPLER["guidance_interval"] == [0.1, 0.9]  # benchmarks/demo_choice.json
    assert demo_sampler({"method": "euler_maruyama"}, steps=8, guidance=3.0) == {**DEMO_SAMPLER, "method": "euler_maruyama",
                                                                               "steps": 8, "guidance": 3.0}
    for bad, message in [({"method": "ddim"}, "sampler method must be one of"), ({"schedule": "cosine"}, "schedule must be"),
                         ({"schedule": "time_shift", "shift": 0}, "shift must be positive"), ({"steps": 0}, "steps must be"),
                         ({"guidance_interval": [0.9, 0.1]}, "guidance_interval must be")]:
        with pytest.raises(MupdError, match=message):
            demo_sampler(bad)
    with pytest.raises(MupdError, match="sampler method must be one of"):
        run_demo(minutes=0.1, out=tmp_path / "never", sampler={"method": "ddim"}, progress=False)
    assert not (tmp_path / "never").exists()  # failed before writing anything
