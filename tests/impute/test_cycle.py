"""The cycle check: image -> predicted RNA -> RNA-conditioned generation -> predicted RNA again.
Statistics against scipy, a planted positive (a "generator" that returns the real crop must give
r = 1 against a shuffled null), the RNA-ignoring control (rna scale 0) at the null, and the CLI end
to end on real her2st spots with a tiny generator trained the way ``mupd demo --dataset her2st`` does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import pearsonr

from mupd.cli import main
from mupd.errors import MupdError
from mupd.impute.cycle import PipelineGenerator, cycle_check, cycle_statistics, derangements, gene_overlap


def test_statistics_match_scipy_and_the_null_sits_at_zero():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(40, 6))
    second = first + rng.normal(scale=1.0, size=first.shape)
    out = cycle_statistics(first, second, n_permutations=100, n_resamples=50)
    expected = np.mean([pearsonr(first[:, g], second[:, g])[0] for g in range(6)])
    assert out["per_gene"]["mean_r"]["value"] == pytest.approx(expected, abs=1e-10)
    assert abs(out["per_gene"]["null"]["mean"]) < 0.05 and out["per_gene"]["null"]["p_value"] < 0.02
    assert out["per_gene"]["mean_r"]["low"] < expected < out["per_gene"]["mean_r"]["high"]
    unrelated = cycle_statistics(first, rng.normal(size=first.shape), n_permutations=100, n_resamples=50)
    assert unrelated["per_gene"]["null"]["p_value"] > 0.05
    perms = derangements(7, 20, seed=1)
    assert (perms != np.arange(7)).all() and all(sorted(p) == list(range(7)) for p in perms)


class RealCrops:
    """A planted positive "generator": it returns each spot's own real crop (a perfect cycle)."""

    def __init__(self, genes, images):
        self.genes, self.images = genes, images

    def __call__(self, values, ids, *, seed=0, progress=False):
        assert len(values) == len(self.images) and values.shape[1] == len(self.genes)
        return self.images


@pytest.fixture(scope="module")
def ridge(mini_her2st):
    from mupd.data.spatial import load_her2st
    from mupd.impute.model import SpotModel
    from mupd.impute.runner import RunSettings

    table = load_her2st(mini_her2st, crop=128, size=64)
    b4 = np.array(table.section) == "B4"
    train = load_her2st(mini_her2st, ["B4"], crop=128, size=64)
    model = SpotModel.fit("pixels-ridge", train, n_genes=300, settings=RunSettings(image_size=64, n_components=16))
    return model, table, ~b4


def test_a_perfect_generator_gives_r_one_and_beats_the_shuffled_null(ridge):
    model, table, held = ridge
    images = table.images[held]
    result, generated = cycle_check(model, images, np.array(table.ids)[held], RealCrops(model.genes, images),
                                    n_permutations=50, n_resamples=50, progress=False)
    assert result["per_gene"]["mean_r"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert result["per_spot"]["mean_r"]["value"] == pytest.approx(1.0, abs=1e-9)
    assert result["per_gene"]["null"]["mean"] < 0.5 and result["per_gene"]["null"]["p_value"] == pytest.approx(1 / 51)
    np.testing.assert_array_equal(generated, images)


def test_small_gene_overlap_is_refused():
    with pytest.raises(MupdError, match=r"predicts 2 of the 100 genes .* --genes-from"):
        gene_overlap(["A", "B", "X"], [f"G{i}" for i in range(98)] + ["A", "B"])
    assert gene_overlap(["B", "X", "A"], ["A", "B", "C"]) == ["B", "A"]


def test_an_rna_ignoring_generator_scores_the_null(ridge, her2st_generator):
    from mupd.pipelines import Pipeline

    model, table, held = ridge
    rows = np.where(held)[0][:12]
    pipe = Pipeline.from_pretrained(her2st_generator)
    deaf = PipelineGenerator(pipe, model.genes, steps=2, guidance=None, scales={"rna": 0.0}, min_overlap=0.01)
    values = model.predict(table.images[rows])[:, [model.genes.index(g) for g in deaf.genes]]
    ids = [table.ids[i] for i in rows]
    a = deaf(values, ids, progress=False)
    b = deaf(values[::-1].copy(), ids, progress=False)  # other RNA, same seeds: an ignoring generator draws the same
    np.testing.assert_array_equal(a, b)
    result, _ = cycle_check(model, table.images[rows], ids, deaf, n_permutations=100, n_resamples=50, progress=False)
    null = result["per_gene"]["null"]
    assert null["q025"] <= result["per_gene"]["mean_r"]["value"] <= null["q975"]
    assert result["generator"]["sampler"]["scales"] == {"rna": 0.0}


def test_cli_train_on_generator_genes_then_cycle(mini_her2st, her2st_generator, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["impute", "train", "--method", "pixels-ridge", "--data", str(mini_her2st), "--sections", "B4",
                 "--crop-px", "128", "--genes-from", str(her2st_generator), "--genes", "5000", "--out", str(model)]) == 0
    config = json.loads((model / "impute_config.json").read_text())
    vocabulary = json.loads((her2st_generator / "gene_vocabulary.json").read_text())
    assert config["crop_px"] == 128 and set(config["genes"]) <= set(vocabulary["genes"])
    out = tmp_path / "cycle.json"
    assert main(["impute", "cycle", str(model), "--generator", str(her2st_generator), "--data", str(mini_her2st),
                 "--sections", "C5", "--max-spots", "10", "--steps", "2", "--permutations", "50", "--out", str(out),
                 "--report", str(tmp_path / "report")]) == 0
    result = json.loads(out.read_text())
    assert result["n_spots"] == 10 and result["held_out"] and result["sections"] == ["C5"]
    for part in ("per_gene", "per_spot"):
        assert {"value", "low", "high"} <= set(result[part]["mean_r"]) and {"mean", "q025", "q975", "p_value"} <= set(result[part]["null"])
    assert set(result["vs_measured_mean_r"]) == {"first_prediction", "second_prediction", "n_genes_measured"}
    assert result["generator"]["genes_given"] == result["n_genes"] == len(config["genes"])
    assert (tmp_path / "report" / "pairs.png").stat().st_size > 2000
    capsys.readouterr()
    # a default panel (top genes by variance, not the generator's) barely overlaps: refused before weights load
    small = tmp_path / "small"
    main(["impute", "train", "--method", "mean", "--data", str(mini_her2st), "--sections", "B4", "--genes", "20", "--out", str(small)])
    capsys.readouterr()
    assert main(["impute", "cycle", str(small), "--generator", str(her2st_generator), "--data", str(mini_her2st),
                 "--sections", "C5", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--genes-from" in err, err
