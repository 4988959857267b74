"""Fitted heads are saved per fold: applied to held-out patients read from a separate file they give the
in-CV predictions and metrics back, and a re-run skips the folds already finished."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mupd.cli import main
from mupd.heads.evaluate import c_index

ARGS = ["heads", "train", "--cohort", "kirp", "--features", "genes", "--head", "mlp", "--loss", "nll", "--folds", "3",
        "--epochs", "4", "--no-report"]


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kirp") / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    return out


def _write_rows(sample_data, case_ids, path, drop=None):
    table = pd.read_csv(sample_data / "tcga" / "tcga_kirp_all_clean.csv.gz", low_memory=False).drop_duplicates("case_id")
    table = table[table["case_id"].astype(str).isin(set(case_ids))]
    if drop:  # the table's first few genes
        table = table.drop(columns=[c for c in table.columns if c.endswith("_rnaseq")][:drop])
    with gzip.open(path, "wt") as fh:
        table.to_csv(fh, index=False)
    return path


def test_fitted_head_on_held_out_patients_matches_cv(run, sample_data, tmp_path, capsys):
    cv = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    rows = cv[(cv["fold"] == 1) & (cv["seed"] == 0)].set_index("case_id")
    held = _write_rows(sample_data, rows.index, tmp_path / "held_out.csv.gz")
    out = tmp_path / "applied"
    assert main(["heads", "evaluate", str(run), "--cohort", str(held), "--fold", "1", "--seed", "0", "--out", str(out)]) == 0
    assert "C-index" in capsys.readouterr().out
    new = pd.read_csv(out / "predictions.csv", dtype={"case_id": str}).set_index("case_id").loc[rows.index]
    np.testing.assert_allclose(new["risk"], rows["risk"], rtol=1e-5, atol=1e-6)
    assert (new["high_risk"] == rows["high_risk"]).all()
    np.testing.assert_allclose(new[[c for c in new.columns if c.startswith("surv_")]],
                               rows[[c for c in rows.columns if c.startswith("surv_")]], rtol=1e-5, atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    in_cv = [f for f in json.loads((run / "metrics.json").read_text())["metrics"]["per_fold"] if f["fold"] == 1]
    assert metrics["c_index"]["value"] == pytest.approx(in_cv[0]["c_index"], abs=1e-9)
    assert metrics["c_index"]["value"] == pytest.approx(c_index(rows["time"], rows["risk"], rows["event"]), abs=1e-9)
    assert metrics["c_index"]["low"] <= metrics["c_index"]["value"] <= metrics["c_index"]["high"]
    assert (out / "km.png").exists() and (out / "report.html").exists()
    # all folds' heads, averaged: runs and scores every row
    assert main(["heads", "evaluate", str(run), "--cohort", str(held), "--out", str(tmp_path / "ensemble"), "--no-report"]) == 0
    applied = json.loads((tmp_path / "ensemble" / "metrics.json").read_text())["config"]
    assert applied["applied_heads"] == ["fold0-seed0", "fold1-seed0", "fold2-seed0"]
    assert applied["patients_seen_in_training"] == len(rows)  # folds 0 and 2 were fitted on these patients
    assert json.loads((out / "metrics.json").read_text())["config"]["patients_seen_in_training"] == 0


def test_other_genes_are_refused_in_one_line(run, sample_data, tmp_path, capsys):
    cv = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    held = _write_rows(sample_data, cv["case_id"][:30], tmp_path / "fewer_genes.csv.gz", drop=2)
    capsys.readouterr()
    assert main(["heads", "evaluate", str(run), "--cohort", str(held), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "differ from the head's" in err and "2 of the head's missing" in err
    assert not (tmp_path / "x").exists()
    assert main(["heads", "evaluate", str(run), "--cohort", str(held)]) == 2  # --out is required with --cohort
    assert "--out" in capsys.readouterr().err


def test_rerun_skips_finished_folds(run, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "folds" / "fold2-seed0")  # as if interrupted during the last fold
    (again / "predictions.csv").unlink()
    # a finished fold file is taken as it is, not refitted: mark one of its predictions
    marked = pd.read_csv(again / "folds" / "fold0-seed0" / "predictions.csv", dtype={"case_id": str})
    marked.loc[0, "risk"] = 123.0
    marked.to_csv(again / "folds" / "fold0-seed0" / "predictions.csv", index=False)
    assert main(ARGS + ["--out", str(again)]) == 0
    summary = json.loads((again / "metrics.json").read_text())
    assert summary["resumed_fits"] == 2
    redone = pd.read_csv(again / "predictions.csv", dtype={"case_id": str})
    first = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    assert redone.loc[(redone["fold"] == 0)].iloc[0]["risk"] == 123.0
    last = lambda frame: frame[frame["fold"] == 2].sort_values("case_id")["risk"].to_numpy()  # noqa: E731
    np.testing.assert_allclose(last(redone), last(first), rtol=1e-6)  # the refitted fold is the same fit
    # another config (more epochs) never reuses those folds
    assert main(ARGS[:-3] + ["--epochs", "5", "--no-report", "--out", str(again)]) == 0
    assert json.loads((again / "metrics.json").read_text())["resumed_fits"] == 0


def test_lifelines_cox_head_is_saved_as_its_linear_map(sample_data, tmp_path):
    """lifelines' CoxPHFitter (pathway scores) applied from disk gives lifelines' own risks back."""
    run = tmp_path / "cox"
    assert main(["heads", "train", "--cohort", "kirp", "--features", "pathways", "--head", "lifelines-cox", "--folds", "3",
                 "--no-report", "--out", str(run)]) == 0
    cv = pd.read_csv(run / "predictions.csv", dtype={"case_id": str})
    rows = cv[cv["fold"] == 2].set_index("case_id")
    held = _write_rows(sample_data, rows.index, tmp_path / "held.csv.gz")
    assert main(["heads", "evaluate", str(run), "--cohort", str(held), "--fold", "2", "--out", str(tmp_path / "a"),
                 "--no-report"]) == 0
    new = pd.read_csv(tmp_path / "a" / "predictions.csv", dtype={"case_id": str}).set_index("case_id").loc[rows.index]
    np.testing.assert_allclose(new["risk"], rows["risk"], rtol=1e-4, atol=1e-4)  # float32 head vs lifelines' float64
    assert json.loads((run / "folds" / "fold2-seed0" / "head.json").read_text())["fitted_by"] == "lifelines-cox"
