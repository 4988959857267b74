"""One heads run end to end: load, split by patient, cross-validate, score, write the run folder:

``OUT/predictions.csv`` (out-of-fold, one row per patient x seed), ``OUT/metrics.json``,
``OUT/*.png`` and ``OUT/report.html``. ``evaluate_run(OUT)`` recomputes metrics and report from the
saved predictions (e.g. after editing them, or to re-render with another library version).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..checkpoint import read_json, write_json
from ..errors import require
from .crossval import HeadSpec, classification_cv, survival_cv
from .data import feature_matrix, load_cohort
from .evaluate import classification_metrics, require_lifelines, survival_metrics
from .splits import check_fold_events, patient_folds

FORMAT = "mupd-heads-run"


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="fit")


def _inputs(cohort, features: str, spec: HeadSpec, genesets):
    """(feature matrix, feature names, gene-set file used or None)."""
    from .data import check_feature_kind, default_genesets

    if "pathways" in check_feature_kind(features) or spec.head == "pathway-tokens":
        genesets = str(genesets or default_genesets())
    if spec.head == "pathway-tokens":
        from ..data.pathways import PathwayScorer

        require(features == "genes", "the pathway-tokens head reads genes; use --features genes")
        spec.genes, spec.pathways = list(cohort.genes), PathwayScorer.from_csv(genesets).pathways
    x, names = feature_matrix(cohort, features, genesets)
    return x, list(names), genesets


def _store(out, summary: dict, case_ids, *arrays):
    """Per-fold results under OUT/folds (resume + reusable heads), keyed on the config (not the seed list:
    each seed has its own folder) and a digest of the inputs, so changed data is refitted."""
    import hashlib

    import numpy as np

    from .saved import FoldStore

    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()[:16]
    key = {"task": summary["task"], "inputs": digest,
           "config": {k: v for k, v in summary["config"].items() if k not in ("cohort", "seeds")}}
    return FoldStore(out, key, case_ids)


def run_survival(cohort: str, out, *, features: str = "genes", spec: HeadSpec | None = None, folds: int = 5,
                 seeds=(0,), genesets=None, report: bool = True) -> dict:
    spec = spec or HeadSpec()
    require_lifelines()
    start = time.perf_counter()
    data = load_cohort(cohort, need_rna=features != "clinical")  # "clinical" only: tables without RNA work too
    x, names, genesets = _inputs(data, features, spec, genesets)
    split = patient_folds(data.case_ids, data.event, folds, seed=0)
    check_fold_events(split, data.event)
    summary = {"format": FORMAT, "task": "survival", "title": f"survival: TCGA-{data.name.upper()}, {features} -> {spec.head} ({spec.loss})",
               "protocol": f"{folds}-fold CV split by patient (case_id), stratified by event; seeds {list(seeds)}; "
                           "95% CI = Student-t over the fold C-indices (each averaged over seeds); KM groups split at "
                           "the training fold's median risk.",
               "config": {"cohort": str(cohort), "features": features, "head": spec.head, "loss": spec.loss,
                          "bins": spec.bins, "hidden": spec.hidden, "dropout": spec.dropout, "penalizer": spec.penalizer,
                          "fit": spec.fit.to_dict(), "folds": folds, "seeds": list(seeds), "n_features": int(x.shape[-1])}}
    store = _store(out, summary, data.case_ids, x, data.time, data.event)
    meta = {"task": "survival", "features": features, "feature_names": names, "genesets": genesets}
    with _progress(len(split) * len(seeds), f"{data.name} {features}/{spec.head}/{spec.loss}") as bar:
        pred, _ = survival_cv(x, data.time, data.event, data.case_ids, split, spec, seeds, progress=bar, store=store, meta=meta)
    summary.update(seconds=round(time.perf_counter() - start, 1), resumed_fits=store.reused)
    return _finish(out, pred, summary, report)


def run_classification(cohort: str, out, *, label: str = "oncotree_code", features: str = "genes",
                       spec: HeadSpec | None = None, folds: int = 5, seeds=(0,), min_count: int = 10,
                       genesets=None, report: bool = True) -> dict:
    spec = spec or HeadSpec(loss="ce")
    spec.loss = "ce"
    start = time.perf_counter()
    data = load_cohort(cohort, need_rna=features != "clinical")  # "clinical" only: tables without RNA work too
    y, classes, keep = data.labels(label, min_count)
    x, names, genesets = _inputs(data, features, spec, genesets)
    x = x[keep]
    split = patient_folds(data.case_ids[keep], y, folds, seed=0)
    summary = {"format": FORMAT, "task": "classification", "classes": classes,
               "title": f"classification: TCGA-{data.name.upper()} {label}, {features} -> {spec.head}",
               "protocol": f"{folds}-fold CV split by patient, stratified by class; classes with < {min_count} patients "
                           f"dropped; class-weighted cross-entropy; seeds {list(seeds)}; 95% CI = t over folds.",
               "config": {"cohort": str(cohort), "label": label, "features": features, "head": spec.head,
                          "fit": spec.fit.to_dict(), "folds": folds, "seeds": list(seeds), "n_features": int(x.shape[-1])}}
    store = _store(out, summary, data.case_ids[keep], x, y)
    meta = {"task": "classification", "features": features, "feature_names": names, "genesets": genesets,
            "label": label, "classes": classes}
    with _progress(len(split) * len(seeds), f"{data.name} {label} {features}/{spec.head}") as bar:
        pred = classification_cv(x, y, len(classes), data.case_ids[keep], split, spec, seeds, progress=bar, store=store,
                                 meta=meta)
    summary.update(seconds=round(time.perf_counter() - start, 1), resumed_fits=store.reused)
    return _finish(out, pred, summary, report)


def _finish(out, pred, summary: dict, report: bool) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pred.to_csv(out / "predictions.csv", index=False)
    return evaluate_run(out, summary=summary, report=report)


def evaluate_run(out, *, summary: dict | None = None, report: bool = True) -> dict:
    """Metrics (and report) of a run folder from its ``predictions.csv``."""
    import pandas as pd

    from . import report as rep

    out = Path(out)
    summary = summary or read_json(out / "metrics.json")
    require(summary.get("format") == FORMAT, f"{out / 'metrics.json'} is not a mupd heads run (format != {FORMAT!r})")
    require((out / "predictions.csv").exists(), f"{out} has no predictions.csv; run `mupd heads train` first")
    pred = pd.read_csv(out / "predictions.csv", dtype={"case_id": str})
    images = []
    if summary["task"] == "survival":
        metrics = survival_metrics(pred)
        if report:
            images = [("Kaplan-Meier: predicted high vs low risk (out-of-fold)", rep.km_plot(pred, out / "km.png", summary["title"])),
                      ("C-index per test fold", rep.fold_plot(metrics["per_fold"], "c_index", out / "c_index_folds.png"))]
    else:
        metrics = classification_metrics(pred, summary["classes"])
        if report:
            images = [("ROC curves", rep.roc_plot(pred, summary["classes"], out / "roc.png")),
                      ("confusion matrix (first seed)", rep.confusion_plot(metrics["confusion_matrix"], summary["classes"], out / "confusion.png"))]
    summary = {**summary, "metrics": metrics}
    write_json(out / "metrics.json", summary)
    if report:
        rep.write_report(out, summary, images)
    return summary


def headline(summary: dict) -> str:
    m = summary["metrics"]
    if summary["task"] == "survival":
        c = m["c_index"]
        over = c.get("method", "") if "bootstrap" in c.get("method", "") else f"t over {c['n']} folds"
        return (f"C-index {c['value']:.3f} (95% CI {c['low']:.3f}-{c['high']:.3f}, {over}), "
                f"log-rank p {m['logrank_p']:.2g}, {m['n_patients']} patients / {m['n_events']} events")
    b, a = m["balanced_accuracy"], m["macro_auc"]
    return (f"balanced accuracy {b['value']:.3f} [{b['low']:.3f}, {b['high']:.3f}], macro AUC {a['value']:.3f} "
            f"[{a['low']:.3f}, {a['high']:.3f}], weighted F1 {m['weighted_f1']['value']:.3f}")


def seeds_arg(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        seeds = ()
    require(bool(seeds), f"--seeds must be a comma list of integers such as 0,1,2; got {text!r}")
    return seeds


__all__ = ["run_survival", "run_classification", "evaluate_run", "headline", "seeds_arg"]
