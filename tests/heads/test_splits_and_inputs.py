"""Patient-disjoint folds and one-line errors for bad inputs (real TCGA rows, edited copies)."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from mupd.errors import MupdError
from mupd.heads.data import check_survival, load_cohort, pad_bags
from mupd.heads.splits import Fold, assert_patient_disjoint, check_fold_events, patient_folds


@pytest.fixture(scope="module")
def brca_rows(sample_data):
    # Slide-level rows: 1,022 slides of 956 patients, so some patients have several rows.
    cols = ["case_id", "slide_id", "age", "is_female", "survival_months", "censorship", "oncotree_code"]
    return pd.read_csv(sample_data / "tcga" / "tcga_brca_all_clean.csv.gz", usecols=cols)


def test_folds_are_patient_disjoint_and_cover_every_row(brca_rows):
    ids = brca_rows["case_id"].to_numpy()
    assert len(set(ids)) < len(ids)  # the test needs repeated patients to mean anything
    folds = patient_folds(ids, brca_rows["censorship"].to_numpy(), k=5, seed=3)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == list(range(len(ids)))
    for f in folds:
        assert not set(ids[f.train]) & set(ids[f.test])
        assert len(f.train) + len(f.test) == len(ids)


def test_a_leaking_split_is_refused(brca_rows):
    ids = brca_rows["case_id"].to_numpy()
    repeated = int(np.flatnonzero(pd.Series(ids).duplicated())[0])
    twin = int(np.flatnonzero(ids == ids[repeated])[0])
    leaky = [Fold(0, np.array([twin]), np.array([repeated]))]  # the same patient on both sides
    with pytest.raises(MupdError, match="both training and test"):
        assert_patient_disjoint(leaky, ids)


def test_all_censored_test_fold_is_refused():
    event = np.array([1, 1, 0, 0, 1, 0], bool)
    folds = [Fold(0, np.array([0, 1, 4]), np.array([2, 3, 5]))]
    with pytest.raises(MupdError, match="fold 0: its test set has no event"):
        check_fold_events(folds, event)


def _write(frame: pd.DataFrame, path):
    with gzip.open(path, "wt") as fh:
        frame.to_csv(fh, index=False)
    return path


@pytest.fixture(scope="module")
def kirp_table(sample_data):
    return pd.read_csv(sample_data / "tcga" / "tcga_kirp_all_clean.csv.gz", nrows=60,
                       usecols=lambda c: not c.endswith(("_cnv", "_mut")))


def test_missing_survival_column_is_one_line_error(kirp_table, tmp_path):
    path = _write(kirp_table.drop(columns=["censorship"]), tmp_path / "nosurv.csv.gz")
    with pytest.raises(MupdError) as info:
        load_cohort(path)
    assert "censorship" in str(info.value) and "\n" not in str(info.value)


def test_negative_time_is_refused(kirp_table, tmp_path):
    bad = kirp_table.copy()
    bad.loc[3, "survival_months"] = -2.0
    with pytest.raises(MupdError, match="negative survival times"):
        load_cohort(_write(bad, tmp_path / "neg.csv.gz"))


def test_all_censored_cohort_and_bad_censorship_flags():
    with pytest.raises(MupdError, match="every patient is censored"):
        check_survival([1.0, 2.0], [1, 1])
    with pytest.raises(MupdError, match="censorship must be 0"):
        check_survival([1.0, 2.0], [0, 2])


def test_bags_of_different_widths_are_refused():
    x, mask = pad_bags([np.ones((3, 4)), np.ones((5, 4))])
    assert x.shape == (2, 5, 4) and mask.sum() == 8
    with pytest.raises(MupdError, match="different feature widths"):
        pad_bags([np.ones((3, 4)), np.ones((3, 6))])


def test_unknown_cohort_names_the_choices():
    with pytest.raises(MupdError, match="choose one of .*'kirc'"):
        load_cohort("nosuchcohort")


def test_missing_labels_are_not_a_class(kirp_table, tmp_path):
    table = kirp_table.copy()
    table["grade"] = ["low"] * 30 + ["high"] * 25 + [None] * (len(table) - 55)
    cohort = load_cohort(_write(table, tmp_path / "grade.csv.gz"))
    labels, classes, keep = cohort.labels("grade", min_count=10)
    assert classes == ["high", "low"] and keep.sum() == len(labels) == cohort.clinical["grade"].notna().sum()


def test_feature_fusion_concatenates_and_checks_names(kirp_table, tmp_path):
    from mupd.heads.data import feature_matrix

    cohort = load_cohort(_write(kirp_table, tmp_path / "kirp.csv.gz"))
    fused, names = feature_matrix(cohort, "genes+clinical")
    assert fused.shape == (len(cohort), len(cohort.genes) + 2) and names[-2:] == ["age", "is_female"]
    with pytest.raises(MupdError, match="unknown or repeated feature set"):
        feature_matrix(cohort, "genes+genes")
