"""Per-gene, per-fold metrics and their summary over folds.

Pearson and Spearman r per gene over the spots of one fold; a gene whose prediction or truth is
constant within the fold (e.g. every gene of the training-mean predictor) has no defined r and
counts as r = 0, reported in ``n_undefined``. MSE per gene on the normalised scale. A fold's
figure is the mean over genes; the summary is mean ± std (ddof=1) over folds, never pooled.
"""

from __future__ import annotations

import numpy as np

from ..errors import require


def _columnwise_pearson(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ac, bc = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((ac**2).sum(0) * (bc**2).sum(0))
    # constant columns (exactly, as scipy.stats.pearsonr checks) have no r; rounding in the mean must not invent one
    defined = (np.ptp(a, axis=0) > 0) & (np.ptp(b, axis=0) > 0) & (denom > 0)
    r = np.where(defined, (ac * bc).sum(0) / np.where(defined, denom, 1.0), 0.0)
    return np.clip(r, -1.0, 1.0), defined


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=0)  # average ranks for ties, as scipy.stats.spearmanr


def gene_metrics(truth, pred) -> dict:
    """(N, G) truth and prediction -> per-gene arrays ``pearson``, ``spearman``, ``mse`` and ``defined``."""
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    require(truth.shape == pred.shape and truth.ndim == 2, f"truth {truth.shape} and prediction {pred.shape} must be equal (N, G)")
    require(truth.shape[0] >= 2, "per-gene correlation needs at least 2 spots")
    require(np.isfinite(pred).all(), "the prediction contains NaN/inf values")
    pearson, defined = _columnwise_pearson(truth, pred)
    spearman, defined_s = _columnwise_pearson(_ranks(truth), _ranks(pred))
    return {"pearson": pearson, "spearman": spearman, "mse": ((truth - pred) ** 2).mean(0), "defined": defined & defined_s}


def fold_summary(metrics: dict, genes) -> dict:
    """One fold: means over genes, the fraction with r > 0, and the per-gene values (for plots/tables)."""
    return {"mean_pearson": float(metrics["pearson"].mean()), "median_pearson": float(np.median(metrics["pearson"])),
            "mean_spearman": float(metrics["spearman"].mean()), "mean_mse": float(metrics["mse"].mean()),
            "fraction_r_positive": float((metrics["pearson"] > 0).mean()),
            "n_genes": int(len(genes)), "n_undefined": int((~metrics["defined"]).sum()),
            "per_gene": {"genes": list(genes), "pearson": metrics["pearson"].round(5).tolist(),
                         "spearman": metrics["spearman"].round(5).tolist(), "mse": metrics["mse"].round(5).tolist()}}


SUMMARY_KEYS = ("mean_pearson", "median_pearson", "mean_spearman", "mean_mse", "fraction_r_positive")


def across_folds(folds: list[dict]) -> dict:
    """Mean ± std (ddof=1) over folds of each fold-level figure; the fold values are listed too."""
    out = {}
    for key in SUMMARY_KEYS:
        values = np.array([f[key] for f in folds], np.float64)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                    "folds": values.round(5).tolist()}
    return out


def top_genes(folds: list[dict], n: int = 5) -> list[tuple[str, float]]:
    """Genes scored in every fold, ranked by their mean Pearson r over folds."""
    per = {}
    for f in folds:
        for g, r in zip(f["per_gene"]["genes"], f["per_gene"]["pearson"]):
            per.setdefault(g, []).append(r)
    common = {g: float(np.mean(v)) for g, v in per.items() if len(v) == len(folds)}
    return sorted(common.items(), key=lambda kv: -kv[1])[:n]


def paired_deltas(methods: dict, reference: str, key: str = "mean_pearson") -> dict:
    """Per-fold difference of each method to ``reference`` (same folds, same genes): mean ± std over
    folds and how many folds the method wins — the fold spread of a *difference*, not of two levels."""
    ref = np.array([f[key] for f in methods[reference]["folds"]])
    out = {}
    for name, entry in methods.items():
        if name == reference:
            continue
        delta = np.array([f[key] for f in entry["folds"]]) - ref
        out[name] = {"mean": float(delta.mean()), "std": float(delta.std(ddof=1)) if len(delta) > 1 else 0.0,
                     "folds": delta.round(5).tolist(), "wins": int((delta > 0).sum()), "n_folds": int(len(delta))}
    return {"reference": reference, "metric": key, "deltas": out}
