"""Survival (and subtype classification) heads on the TCGA cohorts of the sample data.

Per cohort: 5-fold CV split by patient (stratified by event, fold seed 0), seeds 0 and 1 for the
neural heads (averaged per fold), the same folds for every method. Methods compared on identical folds:

* ``clinical/lifelines-cox``  age + sex, lifelines ``CoxPHFitter`` (penalizer 1.0);
* ``pathways/lifelines-cox``  SurvPath pathway scores (mean member z-score), ``CoxPHFitter`` (penalizer 1.0);
* ``pathways/mlp-nll``        the same scores, MLP, discrete-time NLL (4 bins, PORPOISE loss);
* ``genes/linear-cox``        all ``<GENE>_rnaseq`` columns, linear Cox partial likelihood (L2 = weight decay 1.0);
* ``genes/mlp-nll``           all genes, MLP, NLL (the PORPOISE/SurvPath genomic-only MLP/SNN setting);
* ``genes/pathway-tokens-nll`` (only on ``--token-cohorts``: ~90 s per cohort on this CPU).

lifelines' ``CoxPHFitter`` on all ~1,550 genes did not finish one cohort in 10 minutes on the
2-core box, so lifelines' Cox is run on clinical and pathway inputs only.
C-index 95 % CI: Student-t over the 5 fold values. UCEC's table has no RNA: clinical baseline only.
``integrated_brier`` is reported for the discrete-time (NLL) heads only (NaN for risk-only models).

    OMP_NUM_THREADS=1 timeout 1200 python benchmarks/heads_tcga.py --seeds 0,1 --out benchmarks/results/heads_tcga.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mupd.errors import MupdError
from mupd.heads.crossval import HeadSpec, classification_cv, survival_cv
from mupd.heads.data import feature_matrix, load_cohort
from mupd.heads.evaluate import classification_metrics, survival_metrics
from mupd.heads.fit import FitConfig
from mupd.heads.splits import check_fold_events, patient_folds

COHORTS = ("blca", "brca", "coadread", "gbmlgg", "hnsc", "kirc", "kirp", "lihc", "luad", "lusc", "paad", "skcm", "stad", "ucec")

METHODS = {  # name -> (features, spec)
    "clinical/lifelines-cox": ("clinical", dict(head="lifelines-cox", loss="cox", penalizer=1.0)),
    "pathways/lifelines-cox": ("pathways", dict(head="lifelines-cox", loss="cox", penalizer=1.0)),
    "pathways/mlp-nll": ("pathways", dict(head="mlp", loss="nll", fit=FitConfig(epochs=20))),
    "genes/linear-cox": ("genes", dict(head="linear", loss="cox", fit=FitConfig(epochs=60, lr=3e-3, weight_decay=1.0))),
    "genes/mlp-nll": ("genes", dict(head="mlp", loss="nll", fit=FitConfig(epochs=20))),
}
TOKENS = ("genes", dict(head="pathway-tokens", loss="nll", fit=FitConfig(epochs=30, lr=1e-2)))


def _round(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items() if k != "method"}


def survival_cohort(name: str, seeds, with_tokens: bool) -> dict:
    try:
        cohort = load_cohort(name)
        methods = dict(METHODS)
    except MupdError as exc:  # UCEC: no RNA columns -> the clinical baseline only
        cohort = load_cohort(name, need_rna=False)
        methods = {"clinical/lifelines-cox": METHODS["clinical/lifelines-cox"]}
        print(f"  {name}: clinical only ({exc})", flush=True)
    folds = patient_folds(cohort.case_ids, cohort.event, 5, seed=0)
    check_fold_events(folds, cohort.event)
    if with_tokens:
        methods["genes/pathway-tokens-nll"] = TOKENS
    result = {"n_patients": len(cohort), "n_events": int(cohort.event.sum()), "methods": {},
              **({} if cohort.expression is not None else {"note": "no RNA in this table: clinical baseline only"})}
    features = {}
    for method, (kind, spec_kwargs) in methods.items():
        if kind not in features:
            features[kind] = feature_matrix(cohort, kind)[0]
        spec = HeadSpec(**spec_kwargs)
        if spec.head == "pathway-tokens":
            from mupd.data.pathways import PathwayScorer
            from mupd.heads.data import default_genesets

            spec.genes, spec.pathways = list(cohort.genes), PathwayScorer.from_csv(default_genesets()).pathways
        start = time.perf_counter()
        pred, _ = survival_cv(features[kind], cohort.time, cohort.event, cohort.case_ids, folds, spec,
                              seeds=(0,) if spec.head == "lifelines-cox" else seeds)
        m = survival_metrics(pred)
        result["methods"][method] = {"c_index": _round(m["c_index"]), "td_auc": round(m["td_auc"]["value"], 4),
                                     "integrated_brier": round(m["integrated_brier"]["value"], 4),
                                     "logrank_p": float(f"{m['logrank_p']:.3g}"), "seconds": round(time.perf_counter() - start, 1)}
        print(f"  {name:9s} {method:26s} C {m['c_index']['value']:.3f} [{m['c_index']['low']:.3f}, "
              f"{m['c_index']['high']:.3f}]  {time.perf_counter() - start:5.1f}s", flush=True)
    return result


def classification_cohort(name: str, seeds) -> dict | None:
    try:
        cohort = load_cohort(name)
        y, classes, keep = cohort.labels("oncotree_code", 10)
    except MupdError:  # one subtype only, or no RNA
        return None
    x = cohort.expression[keep]
    folds = patient_folds(cohort.case_ids[keep], y, 5, seed=0)
    start = time.perf_counter()
    pred = classification_cv(x, y, len(classes), cohort.case_ids[keep], folds,
                             HeadSpec(head="mlp", loss="ce", fit=FitConfig(epochs=20)), seeds)
    m = classification_metrics(pred, classes)
    print(f"  {name:9s} oncotree_code genes/mlp  bal.acc {m['balanced_accuracy']['value']:.3f}  "
          f"macro AUC {m['macro_auc']['value']:.3f}", flush=True)
    return {"classes": classes, "n": int(len(y)), "seconds": round(time.perf_counter() - start, 1),
            **{k: _round(m[k]) for k in ("balanced_accuracy", "macro_auc", "weighted_f1")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/heads_tcga.json")
    parser.add_argument("--cohorts", default=",".join(COHORTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--token-cohorts", default="kirc", help="cohorts that also run the pathway-tokens head")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    tokens = set(args.token_cohorts.split(",")) if args.token_cohorts else set()
    out = {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, 1 torch thread; "
                       "shared by several jobs (timings are under load)",
           "protocol": "5-fold CV by patient (case_id; one row per patient), stratified by event; neural heads seeds "
                       f"{list(seeds)}; C-index = lifelines concordance_index (Harrell); 95% CI = Student-t over the 5 "
                       "fold values; td_auc = scikit-survival cumulative_dynamic_auc at the 25/50/75% event-time quantiles; "
                       "logrank_p: out-of-fold high vs low risk (split at the training fold's median risk).",
           "survival": {}, "classification": {}, "skipped": {}}
    start, cpu_start = time.perf_counter(), time.process_time()
    for name in args.cohorts.split(","):
        try:
            out["survival"][name] = survival_cohort(name, seeds, name in tokens)
        except Exception as exc:  # e.g. UCEC: no RNA columns
            out["skipped"][name] = f"{type(exc).__name__}: {exc}"
            print(f"  {name}: skipped ({exc})", flush=True)
            continue
        cls = classification_cohort(name, seeds)
        if cls is not None:
            out["classification"][name] = cls
        out["total_seconds"] = round(time.perf_counter() - start, 1)
        out["total_cpu_seconds"] = round(time.process_time() - cpu_start, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")  # after every cohort: partial results survive a timeout
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
