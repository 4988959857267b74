"""``mupd demo --dataset her2st`` at a tiny budget on real her2st spots (C4 -> held-out C5, a few
spots each): the outputs exist and say what they are, the pathway tokens see exactly the
``PathwayScorer`` scores, and the saved checkpoint, reloaded with ``Pipeline.from_pretrained``,
generates from a spot's ``{gene: count}`` dict, and different RNA gives different pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mupd.errors import MupdError


@pytest.fixture(scope="module")
def demo(sample_data, tmp_path_factory):
    pytest.importorskip("sklearn")
    from mupd.train.demo_her2st import run_demo_her2st

    out = tmp_path_factory.mktemp("her2st-demo")
    result = run_demo_her2st(minutes=0.05, out=out, seed=0, progress=False, threads=1, root=sample_data / "her2st",
                             max_spots=6, sample_steps=2, grid_spots=3, sections=(("C4",), ("C5",)), images=96)
    return out, result["metrics"]


def test_outputs_report_held_out_spots_and_conditions(demo):
    from PIL import Image

    out, metrics = demo
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["recipe"]["train_sections"] == ["C4"] and metrics["recipe"]["held_out_sections"] == ["C5"]
    assert metrics["recipe"]["held_out_spots"] == 6 and metrics["recipe"]["pathways"] == 50
    ev = metrics["evaluation"]
    for mode in ("rna", "none"):
        assert np.isfinite(ev[mode]["fid_kid_vs_real_of_same_spots"]["fid"]["value"])
        readout = ev[mode]["readout"]
        assert readout["n"] == 6 and {"matched", "shuffled", "matched_minus_shuffled"} <= set(readout)
    assert metrics["generator"]["images_seen"] > 0
    # grid: a row each for the real crops, RNA, text, both, none; a column per held-out spot (2x scale)
    grid = Image.open(out / "grid.png")
    assert grid.height == 5 * (2 * 64 + 2) + 2
    assert grid.width > 3 * 2 * 64
    page = (out / "report.html").read_text()
    assert "never seen in training" in page and "data:image/png;base64," in page


@pytest.fixture(scope="module")
def spots(sample_data):
    from mupd.train.demo_her2st import load_data

    return load_data(sample_data / "her2st", max_spots=6, captions=False, sections=(("C4",), ("C5",)))


def test_pathway_tokens_score_like_the_pathway_scorer(spots, sample_data):
    from mupd.encoders import registry
    from mupd.train.demo_her2st import genesets_path

    data = spots
    encoder = registry.build("rna", "pathway-tokens", genes=data.vocabulary.genes, pathways=str(genesets_path(sample_data / "her2st")))
    scores = encoder.scores(torch.from_numpy(data.rna)).numpy()
    np.testing.assert_allclose(scores, data.pathway_scores, rtol=1e-4, atol=1e-5)
    # the vocabulary is fitted on the training spots only: held-out spots are not centred at 0
    assert np.abs(data.rna[data.train].mean(0)).max() < 1e-4


def test_reloaded_checkpoint_generates_from_rna(demo, spots):
    from mupd.pipelines import Pipeline

    out, _ = demo
    pipe = Pipeline.from_pretrained(out / "checkpoint")
    assert "rna" in pipe.modalities and pipe.vocabulary is not None
    held = np.where(~spots.train)[0]
    kw = {"n": 1, "steps": 2, "seed": 5, "output_type": "np"}
    first = np.asarray(pipe(rna=spots.gene_dict(held[0]), **kw).images)
    again = np.asarray(pipe(rna=spots.gene_dict(held[0]), **kw).images)
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    # three optimiser steps (warm-up lr) move the zero-initialised gates too little to show in 8-bit
    # pixels, so compare the velocity: a spot's RNA, mapped through the saved vocabulary and
    # encoder, must reach the reloaded model
    x, t = pipe.noise([5]), torch.full((1,), 0.5)
    with torch.no_grad():
        v = [pipe.model(x, t, pipe.encode_conditions(1, rna=spots.gene_dict(i))[0]) for i in (held[0], held[3])]
        v_none = pipe.model(x, t, {})
    assert not torch.equal(v[0], v[1]) and not torch.equal(v[0], v_none)


def test_bad_sections_fail_before_any_model(sample_data):
    from mupd.train.demo_her2st import load_data

    with pytest.raises(MupdError, match="overlap"):
        load_data(sample_data / "her2st", sections=(("C5",), ("C5",)))
    with pytest.raises(MupdError, match="not a her2st folder"):
        load_data(sample_data / "pcam")
