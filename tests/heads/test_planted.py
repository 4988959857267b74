"""A survival / class signal planted in real TCGA expression is learned, end to end through the CLI."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from mupd.cli import main


@pytest.fixture(scope="module")
def planted(sample_data, tmp_path_factory):
    """KIRP rows with survival drawn from a Cox model on one gene and a label thresholding another."""
    table = pd.read_csv(sample_data / "tcga" / "tcga_kirp_all_clean.csv.gz",
                        usecols=lambda c: not c.endswith(("_cnv", "_mut"))).drop_duplicates("case_id")
    rng = np.random.default_rng(0)
    genes = [c for c in table.columns if c.endswith("_rnaseq")]
    x = table[genes[10]].to_numpy()
    x = (x - x.mean()) / x.std()
    death = rng.exponential(30.0 * np.exp(-2.5 * x))  # hazard grows with the gene (oracle C-index 0.84)
    follow_up = rng.uniform(5, 120, len(x))
    table["survival_months"] = np.minimum(death, follow_up)
    table["censorship"] = (death > follow_up).astype(int)
    y = table[genes[20]].to_numpy()
    table["planted_class"] = np.where(y > np.median(y), "high", "low")
    path = tmp_path_factory.mktemp("planted") / "tcga_planted_all_clean.csv.gz"
    with gzip.open(path, "wt") as fh:
        table.to_csv(fh, index=False)
    return path


def _run(args, out):
    assert main(args + ["--out", str(out), "--folds", "3"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_planted_survival_is_learned_by_cox_and_nll_heads(planted, tmp_path):
    cox = _run(["heads", "train", "--cohort", str(planted), "--features", "genes", "--head", "linear", "--loss", "cox",
                "--epochs", "60", "--lr", "3e-3", "--weight-decay", "1.0"], tmp_path / "cox")
    assert cox["metrics"]["c_index"]["value"] > 0.66  # 1,554 genes, 173 training patients: far from the oracle
    nll = _run(["heads", "train", "--cohort", str(planted), "--features", "genes", "--head", "mlp", "--loss", "nll",
                "--epochs", "15", "--no-report"], tmp_path / "nll")
    assert nll["metrics"]["c_index"]["value"] > 0.64
    assert (tmp_path / "cox" / "km.png").stat().st_size > 10_000 and (tmp_path / "cox" / "report.html").exists()
    assert cox["metrics"]["logrank_p"] < 1e-3


def test_clinical_only_shows_no_planted_signal(planted, tmp_path):
    # Age/sex carry none of the planted hazard: the same pipeline must report chance, not a leak.
    run = _run(["heads", "train", "--cohort", str(planted), "--features", "clinical", "--head", "lifelines-cox",
                "--no-report"], tmp_path / "clin")
    assert 0.35 < run["metrics"]["c_index"]["value"] < 0.65


def test_planted_class_is_learned_and_evaluate_rerenders(planted, tmp_path, capsys):
    run = _run(["heads", "train", "--task", "classification", "--cohort", str(planted), "--label", "planted_class",
                "--features", "genes", "--head", "linear", "--epochs", "30", "--weight-decay", "1.0"], tmp_path / "cls")
    assert run["metrics"]["balanced_accuracy"]["value"] > 0.75
    assert run["metrics"]["macro_auc"]["value"] > 0.85
    assert (tmp_path / "cls" / "roc.png").exists() and (tmp_path / "cls" / "confusion.png").exists()
    (tmp_path / "cls" / "report.html").unlink()
    assert main(["heads", "evaluate", str(tmp_path / "cls")]) == 0
    assert (tmp_path / "cls" / "report.html").exists() and "balanced accuracy" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_exit_2(planted, tmp_path, capsys):
    assert main(["heads", "train", "--task", "classification", "--cohort", str(planted), "--label", "nope",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mupd: error:") and "'nope'" in err and "\n" not in err
    assert main(["heads", "train", "--cohort", str(planted), "--seeds", "a,b", "--out", str(tmp_path / "y")]) == 2
