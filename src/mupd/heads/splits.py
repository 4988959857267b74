"""k-fold cross-validation split by patient: no patient is ever in a fold's training and test set.

Folds are stratified on the event indicator (survival) or the class (classification) with
scikit-learn's ``StratifiedGroupKFold`` (groups = patients), so every test fold has events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MupdError, require


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # row indices
    test: np.ndarray


def patient_folds(case_ids, strata, k: int = 5, seed: int = 0) -> list[Fold]:
    """``k`` folds over rows grouped by ``case_ids`` and stratified by ``strata``; checked disjoint."""
    from sklearn.model_selection import StratifiedGroupKFold

    case_ids = np.asarray(case_ids).astype(str)
    strata = np.asarray(strata)
    require(isinstance(k, int) and k >= 2, f"--folds must be an integer >= 2, got {k!r}")
    n_patients = len(np.unique(case_ids))
    require(n_patients >= 2 * k, f"{n_patients} patients are too few for {k} folds (need >= {2 * k})")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [Fold(i, np.sort(tr), np.sort(te)) for i, (tr, te) in enumerate(splitter.split(case_ids, strata, case_ids))]
    assert_patient_disjoint(folds, case_ids)
    return folds


def assert_patient_disjoint(folds: list[Fold], case_ids) -> None:
    """Raise if any patient is in both the training and the test rows of a fold, or tests overlap."""
    case_ids = np.asarray(case_ids).astype(str)
    seen_test: set[str] = set()
    for fold in folds:
        train, test = set(case_ids[fold.train]), set(case_ids[fold.test])
        shared = train & test
        if shared:
            raise MupdError(f"fold {fold.index}: {len(shared)} patients are in both training and test "
                            f"(first {sorted(shared)[:3]}); split by case_id")
        again = test & seen_test
        if again:
            raise MupdError(f"fold {fold.index}: patients {sorted(again)[:3]} are in two test folds")
        seen_test |= test


def check_fold_events(folds: list[Fold], event: np.ndarray) -> None:
    """Every test fold needs an event (C-index is undefined otherwise) and every training fold too."""
    for fold in folds:
        for part, rows in (("test", fold.test), ("training", fold.train)):
            require(bool(event[rows].any()), f"fold {fold.index}: its {part} set has no event (all "
                    f"{len(rows)} patients censored); use fewer folds or a larger cohort")
