"""Metrics from out-of-fold predictions, with the established implementations:

* survival: Harrell's C-index (lifelines ``concordance_index``), cumulative/dynamic time-dependent
  AUC and, for discrete-time (NLL) heads, the integrated Brier score over the 10-75 % event-time
  quantiles (scikit-survival, IPCW, when installed; NaN otherwise), Kaplan–Meier curves of the predicted high- and
  low-risk halves with a log-rank test (lifelines);
* classification: balanced accuracy, macro one-vs-rest ROC AUC, weighted F1 (scikit-learn).

Intervals: a metric is computed per test fold (averaged over seeds), and the 95 % CI is the
Student-t interval over the k fold values (``method: "t over folds"``), the usual CV report
(PORPOISE/SurvPath give mean ± std over 5 folds; ``std`` is reported too).
"""

from __future__ import annotations

import numpy as np

from ..errors import missing_extra, require


def require_lifelines() -> None:
    import importlib.util

    if importlib.util.find_spec("lifelines") is None:
        raise missing_extra("lifelines", "heads", "survival metrics (C-index, Kaplan-Meier, log-rank)")


def c_index(time, risk, event) -> float:
    """Harrell's C: higher risk should mean shorter survival (lifelines takes a *survival* score)."""
    from lifelines.utils import concordance_index

    return float(concordance_index(np.asarray(time), -np.asarray(risk), np.asarray(event)))


def fold_interval(values, confidence: float = 0.95) -> dict:
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "std": float("nan"), "n": 0}
    mean, std = float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * std / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return {"value": mean, "low": mean - half, "high": mean + half, "std": std, "n": int(values.size),
            "confidence": confidence, "method": "t over folds"}


def _td_auc(train, test, times) -> float:
    try:
        from sksurv.metrics import cumulative_dynamic_auc
        from sksurv.util import Surv
    except ImportError:
        return float("nan")
    y_train = Surv.from_arrays(train["event"].astype(bool), train["time"])
    y_test = Surv.from_arrays(test["event"].astype(bool), test["time"])
    # Evaluation times must lie inside the test follow-up and below the training maximum.
    lo, hi = test["time"].min(), min(test["time"].max(), train["time"].max())
    times = np.asarray([t for t in times if lo <= t < hi])
    if times.size == 0 or not test["event"].any():
        return float("nan")
    import warnings

    try:
        with warnings.catch_warnings():  # a time with no test case at risk gives 0/0 there: NaN, dropped over folds
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(cumulative_dynamic_auc(y_train, y_test, test["risk"].to_numpy(), times)[1])
    except ValueError:
        return float("nan")


def step_survival(test, times) -> np.ndarray | None:
    """S(t) of a discrete-time head at ``times``: the survival to the start of the bin holding t
    (``surv_k`` = survival past bin k; bin k spans [edge_k, edge_{k+1}), edge_0 = 0)."""
    test = test.dropna(axis=1, how="all")  # folds whose tied quantiles merged bins have fewer columns
    surv_cols = sorted((c for c in test.columns if c.startswith("surv_")), key=lambda c: int(c[5:]))
    if not surv_cols or test[surv_cols[0]].isna().any():
        return None
    edges = test[sorted((c for c in test.columns if c.startswith("edge_")), key=lambda c: int(c[5:]))].to_numpy()[0]
    padded = np.concatenate([np.ones((len(test), 1)), test[surv_cols].to_numpy()], axis=1)
    return padded[:, np.searchsorted(edges, np.asarray(times), side="right")]


def _ibs(train, test, times) -> float:
    """Integrated Brier score (scikit-survival, IPCW) of a discrete-time head; NaN for risk-only heads."""
    try:
        from sksurv.metrics import integrated_brier_score
        from sksurv.util import Surv
    except ImportError:
        return float("nan")
    lo, hi = test["time"].min(), min(test["time"].max(), train["time"].max())
    times = np.asarray([t for t in times if lo <= t < hi])
    estimate = step_survival(test, times) if times.size >= 2 else None
    if estimate is None:
        return float("nan")
    try:
        return float(integrated_brier_score(Surv.from_arrays(train["event"].astype(bool), train["time"]),
                                            Surv.from_arrays(test["event"].astype(bool), test["time"]), estimate, times))
    except ValueError:
        return float("nan")


def survival_metrics(pred, *, td_auc_quantiles=(0.25, 0.5, 0.75)) -> dict:
    """C-index (and td-AUC) per fold and seed, aggregated per fold, with a t-interval over folds."""
    from lifelines.statistics import logrank_test

    require({"time", "event", "risk", "fold", "seed"} <= set(pred.columns), "predictions need time, event, risk, fold, seed")
    times = np.quantile(pred.loc[pred["event"] == 1, "time"], td_auc_quantiles)
    brier_times = np.quantile(pred.loc[pred["event"] == 1, "time"], np.linspace(0.1, 0.75, 14))
    per = []
    for (seed, fold), test in pred.groupby(["seed", "fold"]):
        train = pred[(pred["seed"] == seed) & (pred["fold"] != fold)]  # the other folds = this fold's training rows
        per.append({"seed": int(seed), "fold": int(fold), "n": len(test), "events": int(test["event"].sum()),
                    "c_index": c_index(test["time"], test["risk"], test["event"]),
                    "td_auc": _td_auc(train, test, times),
                    "ibs": _ibs(train, test, brier_times)})
    import pandas as pd

    per = pd.DataFrame(per)
    by_fold = per.groupby("fold")[["c_index", "td_auc", "ibs"]].mean()
    first = pred[pred["seed"] == pred["seed"].min()]
    high, low = first[first["high_risk"] == 1], first[first["high_risk"] == 0]
    logrank = logrank_test(high["time"], low["time"], high["event"], low["event"]) if len(high) and len(low) else None
    return {"c_index": fold_interval(by_fold["c_index"]), "td_auc": fold_interval(by_fold["td_auc"]),
            "integrated_brier": fold_interval(by_fold["ibs"]),
            "td_auc_times_months": [float(t) for t in times],
            "logrank_p": float(logrank.p_value) if logrank is not None else float("nan"),
            "n_high_risk": int(len(high)), "n_low_risk": int(len(low)),
            "per_fold": per.to_dict(orient="records"), "n_patients": int(first["case_id"].nunique()),
            "n_events": int(first["event"].sum()), "seeds": sorted(int(s) for s in pred["seed"].unique())}


def _probs(frame) -> np.ndarray:
    cols = sorted((c for c in frame.columns if c.startswith("prob_")), key=lambda c: int(c[5:]))
    return frame[cols].to_numpy()


def classification_metrics(pred, class_names: list[str]) -> dict:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    per = []
    n_classes = len(class_names)
    for (seed, fold), test in pred.groupby(["seed", "fold"]):
        prob, y = _probs(test), test["label"].to_numpy()
        guess = prob.argmax(1)
        present = np.unique(y)
        if len(present) < 2:
            auc = float("nan")
        elif n_classes == 2:
            auc = roc_auc_score(y, prob[:, 1])
        else:  # classes absent from a small test fold are left out of the macro average
            p = prob[:, present] / prob[:, present].sum(1, keepdims=True)
            auc = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present) if len(present) > 2 else \
                roc_auc_score(y == present[1], p[:, 1])
        per.append({"seed": int(seed), "fold": int(fold), "n": len(test),
                    "balanced_accuracy": balanced_accuracy_score(y, guess),
                    "macro_auc": float(auc), "weighted_f1": f1_score(y, guess, average="weighted")})
    import pandas as pd

    per = pd.DataFrame(per)
    by_fold = per.groupby("fold")[["balanced_accuracy", "macro_auc", "weighted_f1"]].mean()
    first = pred[pred["seed"] == pred["seed"].min()]
    matrix = confusion_matrix(first["label"], _probs(first).argmax(1), labels=list(range(n_classes)))
    return {**{m: fold_interval(by_fold[m]) for m in by_fold.columns}, "classes": list(class_names),
            "confusion_matrix": matrix.tolist(), "per_fold": per.to_dict(orient="records"),
            "n_samples": int(len(first)), "seeds": sorted(int(s) for s in pred["seed"].unique())}
