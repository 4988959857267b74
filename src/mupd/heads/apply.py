"""Apply fitted heads to a new cohort without refitting: ``mupd heads evaluate RUN --cohort TABLE --out DIR``.

The heads are the ones a ``mupd heads train`` run saved per fold and seed (``heads.saved``); by default
every one of them is applied and their outputs averaged (an ensemble of the k fold heads), or one is
picked with ``--fold``/``--seed``. Each head standardises with its own training fold's statistics and
splits high/low risk at its own training-median risk, so nothing is fitted on the new rows.

The new table must give the same inputs: the same feature set and the same columns (genes, pathways,
covariates) in the same order — otherwise a one-line error says what differs. Writes
``predictions.csv``, ``metrics.json`` (95 % CIs by bootstrap over patients, 1,000 resamples) and
``report.html`` (KM curves, or ROC and confusion matrix).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..checkpoint import read_json, write_json
from ..errors import require

FORMAT = "mupd-heads-run"


def fold_folders(run: Path, fold: int | None, seed: int | None) -> list[Path]:
    folders = sorted((run / "folds").glob("fold*-seed*"))
    require(bool(folders), f"{run} has no fitted heads (no folds/ folder); it was written before heads were saved — "
            "rerun `mupd heads train`")
    pick = [f for f in folders if (fold is None or f.name.split("-")[0] == f"fold{fold}")
            and (seed is None or f.name.split("-")[1] == f"seed{seed}")]
    require(bool(pick), f"{run}: no fitted head for fold {fold} / seed {seed}; have {[f.name for f in folders]}")
    return pick


def seen_in_training(run: Path, folders, case_ids) -> int:
    """How many of ``case_ids`` some applied head was fitted on (its training rows = the run's patients
    outside that fold's test rows)."""
    import pandas as pd

    pred = pd.read_csv(run / "predictions.csv", dtype={"case_id": str}, usecols=["case_id", "fold"])
    everyone, seen = set(pred["case_id"]), set()
    for folder in folders:
        fold = int(folder.name.split("-")[0][4:])
        seen |= everyone - set(pred.loc[pred["fold"] == fold, "case_id"])
    return len(seen & set(map(str, case_ids)))


def check_same_inputs(table: str, names: list[str], saved: list[str], features: str) -> None:
    """One-line refusal when the new inputs are not the columns the head was fitted on."""
    if names == saved:
        return
    missing = [n for n in saved if n not in set(names)]
    extra = [n for n in names if n not in set(saved)]
    require(False, f"{table}: its '{features}' inputs differ from the head's ({len(names)} columns vs {len(saved)}; "
                   f"{len(missing)} of the head's missing, first {missing[:3]}; {len(extra)} new, first {extra[:3]}"
                   f"{'; same names, other order' if not missing and not extra else ''}); give a table with the same columns")


def _outputs(folders, x):
    """Per head: (meta, raw outputs) on the new inputs."""
    import torch

    from .fit import predict
    from .saved import load_fitted

    out = []
    for folder in folders:
        model, scale, meta = load_fitted(folder)
        xin = scale(x) if scale is not None else x
        out.append((meta, predict(model, torch.as_tensor(np.asarray(xin, np.float32)))))
    return out


def _survival_frame(data, outputs):
    import pandas as pd

    from .survival import risk_from_logits, survival_curve

    risks, votes, curves = [], [], []
    for meta, out in outputs:
        risk = (risk_from_logits(out) if meta["loss"] == "nll" else out[:, 0]).numpy()
        risks.append(risk)
        votes.append(risk > meta["threshold"])
        if meta["loss"] == "nll" and len(outputs) == 1:  # bins differ between folds: curves only for one head
            curves = survival_curve(out).numpy()
    frame = pd.DataFrame({"case_id": data.case_ids, "fold": 0, "seed": 0, "time": data.time,
                          "event": data.event.astype(int), "risk": np.mean(risks, 0),
                          "high_risk": (np.mean(votes, 0) > 0.5).astype(int)})
    if len(curves):
        for k in range(curves.shape[1]):
            frame[f"surv_{k}"] = curves[:, k]
    return frame


def bootstrap(metric, n: int, rounds: int = 1000, seed: int = 0) -> dict:
    """Value on all rows and a percentile 95 % CI over patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    value = float(metric(np.arange(n)))
    draws = []
    for _ in range(rounds):
        v = metric(rng.integers(0, n, n))
        if np.isfinite(v):
            draws.append(v)
    low, high = (np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan))
    return {"value": value, "low": float(low), "high": float(high), "std": float(np.std(draws)) if draws else float("nan"),
            "n": n, "confidence": 0.95, "method": f"bootstrap over patients ({rounds})"}


def _survival_metrics(pred) -> dict:
    from lifelines.statistics import logrank_test

    from .evaluate import c_index

    t, r, e = pred["time"].to_numpy(), pred["risk"].to_numpy(), pred["event"].to_numpy()

    def c(rows):
        return c_index(t[rows], r[rows], e[rows]) if e[rows].any() else float("nan")

    high, low = pred[pred["high_risk"] == 1], pred[pred["high_risk"] == 0]
    p = logrank_test(high["time"], low["time"], high["event"], low["event"]).p_value if len(high) and len(low) else np.nan
    return {"c_index": bootstrap(c, len(pred)), "logrank_p": float(p), "n_high_risk": int(len(high)),
            "n_low_risk": int(len(low)), "n_patients": int(len(pred)), "n_events": int(e.sum())}


def _classification_metrics(pred, classes) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    from .evaluate import classification_metrics

    y = pred["label"].to_numpy()
    prob = pred[[f"prob_{k}" for k in range(len(classes))]].to_numpy()

    def auc(rows):
        present = np.unique(y[rows])
        if len(present) < 2:
            return float("nan")
        if len(classes) == 2:
            return roc_auc_score(y[rows], prob[rows, 1])
        p = prob[rows][:, present] / prob[rows][:, present].sum(1, keepdims=True)
        return roc_auc_score(y[rows], p, multi_class="ovr", labels=present) if len(present) > 2 else \
            roc_auc_score(y[rows] == present[1], p[:, 1])

    base = classification_metrics(pred, classes)  # confusion matrix, counts
    n = len(pred)
    return {"balanced_accuracy": bootstrap(lambda rows: balanced_accuracy_score(y[rows], prob[rows].argmax(1)), n),
            "macro_auc": bootstrap(auc, n),
            "weighted_f1": bootstrap(lambda rows: f1_score(y[rows], prob[rows].argmax(1), average="weighted"), n),
            "classes": classes, "confusion_matrix": base["confusion_matrix"], "n_samples": n}


def evaluate_new(run, cohort: str, out, *, fold: int | None = None, seed: int | None = None, report: bool = True) -> dict:
    """Apply the fitted heads of ``run`` to the table ``cohort``; write predictions, metrics and report to ``out``."""
    import pandas as pd
    import torch

    from . import report as rep
    from .data import feature_matrix, load_cohort

    start = time.perf_counter()
    run, out = Path(run), Path(out)
    summary = read_json(run / "metrics.json")
    require(summary.get("format") == FORMAT, f"{run / 'metrics.json'} is not a mupd heads run (format != {FORMAT!r})")
    require(summary["task"] in ("survival", "classification"), f"{run} is a --task {summary['task']} run; applying "
            "heads to new inputs works for survival and classification tables")
    require(out.resolve() != run.resolve(), "--out must be a new folder, not the training run (its files would be replaced)")
    folders = fold_folders(run, fold, seed)
    meta = read_json(folders[0] / "head.json")
    data = load_cohort(cohort, need_rna=meta["features"] != "clinical")
    x, names = feature_matrix(data, meta["features"], meta.get("genesets"))
    check_same_inputs(str(cohort), list(names), meta["feature_names"], meta["features"])
    outputs = _outputs(folders, x)
    seen = seen_in_training(run, folders, data.case_ids)
    info = {"applied_heads": [f.name for f in folders], "source_run": str(run), "cohort": str(cohort),
            "ensemble": "mean of the heads' outputs" if len(folders) > 1 else "one head", "patients_seen_in_training": seen}
    if seen:
        import logging

        logging.getLogger("mupd.heads").warning(
            "%d of these patients were in the training rows of an applied head: their metrics are optimistic "
            "(for the training cohort's own patients use --fold of the fold that held them out)", seen)
    if summary["task"] == "survival":
        pred = _survival_frame(data, outputs)
        metrics = _survival_metrics(pred)
    else:
        classes = meta["classes"]
        values = data.clinical[meta["label"]].astype(str).to_numpy() if meta["label"] in data.clinical else None
        require(values is not None, f"{cohort} has no '{meta['label']}' column (the head's label)")
        keep = np.isin(values, classes)
        require(keep.sum() >= 2, f"{cohort}: fewer than 2 rows carry one of the head's classes {classes} in '{meta['label']}'")
        prob = np.mean([torch.softmax(o, 1).numpy() for _, o in outputs], 0)[keep]
        pred = pd.DataFrame({"case_id": data.case_ids[keep], "fold": 0, "seed": 0,
                             "label": np.searchsorted(classes, values[keep])})
        for k in range(len(classes)):
            pred[f"prob_{k}"] = prob[:, k]
        metrics = _classification_metrics(pred, classes)
        info["rows_without_a_known_class"] = int((~keep).sum())
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False)
    new = {"format": "mupd-heads-applied", "task": summary["task"], "classes": summary.get("classes"),
           "title": f"{summary['title']} -> applied to {Path(str(cohort)).name}", "protocol": (
               "Heads fitted by the source run (per fold/seed, never refitted here) applied to new rows; "
               "95% CI = bootstrap over patients."), "config": info, "metrics": metrics,
           "seconds": round(time.perf_counter() - start, 1)}
    write_json(out / "metrics.json", new)
    if report:
        if summary["task"] == "survival":
            images = [("Kaplan-Meier: predicted high vs low risk (training-fold thresholds)", rep.km_plot(pred, out / "km.png", f"{summary['config'].get('features')} -> {summary['config'].get('head')}, applied to "
                                                f"{Path(str(cohort)).name}"[:70]))]
        else:
            images = [("ROC curves", rep.roc_plot(pred, summary["classes"], out / "roc.png")),
                      ("confusion matrix", rep.confusion_plot(metrics["confusion_matrix"], summary["classes"], out / "confusion.png"))]
        rep.write_report(out, new, images)
    return new
