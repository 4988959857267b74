"""Downstream utility: few-shot linear probes on frozen features, with and without synthetic data.

For each shot count k and seed, k real examples per class are drawn from the training pool, a
logistic-regression probe (standardised features) is fitted with and without the synthetic
examples added, and scored on the held-out test set (balanced accuracy and macro AUC for two
classes). Results are the mean over seeds with a 95 % bootstrap CI over seeds.
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from .bootstrap import mean_ci, run_single_threaded


def _probe(train_x, train_y, test_x, test_y, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0, random_state=seed))
    model.fit(train_x, train_y)
    out = {"balanced_accuracy": float(balanced_accuracy_score(test_y, model.predict(test_x)))}
    if len(model.classes_) == 2 and len(np.unique(test_y)) == 2:
        out["auc"] = float(roc_auc_score(test_y == model.classes_[1], model.predict_proba(test_x)[:, 1]))
    return out


def _draw_shots(labels: np.ndarray, classes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    picks = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        require(len(pool) >= k, f"class {c!r} has {len(pool)} training examples, fewer than {k} shots")
        picks.append(rng.choice(pool, k, replace=False))
    return np.concatenate(picks)


@run_single_threaded
def few_shot(train_features, train_labels, test_features, test_labels, *, shots=(1, 5, 10), seeds=range(5),
             synthetic_features=None, synthetic_labels=None, synthetic_per_class: int | None = None,
             n_resamples: int = 200, progress: bool = False) -> dict:
    """Few-shot linear-probe results per shot count, real-only and real+synthetic."""
    tx, ty = np.asarray(train_features, np.float64), np.asarray(train_labels)
    vx, vy = np.asarray(test_features, np.float64), np.asarray(test_labels)
    require(len(tx) == len(ty) and len(vx) == len(vy), "features and labels must have the same number of rows")
    require(tx.shape[1] == vx.shape[1], f"train features are {tx.shape[1]}-d, test {vx.shape[1]}-d")
    classes = np.unique(ty)
    require(len(classes) >= 2, "few-shot evaluation needs at least two classes in the training pool")
    with_synthetic = synthetic_features is not None
    if with_synthetic:
        sx, sy = np.asarray(synthetic_features, np.float64), np.asarray(synthetic_labels)
        require(len(sx) == len(sy) and sx.shape[1] == tx.shape[1], "synthetic features/labels must match the real ones")
    seeds = list(seeds)
    jobs = [(k, s) for k in shots for s in seeds]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="few-shot probes", unit="fit")
    raw: dict = {}
    for k, seed in jobs:
        rng = np.random.default_rng(seed)
        idx = _draw_shots(ty, classes, k, rng)
        raw.setdefault((k, "real"), []).append(_probe(tx[idx], ty[idx], vx, vy, seed))
        if with_synthetic:
            sidx = np.arange(len(sx)) if synthetic_per_class is None else _draw_shots(sy, classes, synthetic_per_class, rng)
            x = np.concatenate([tx[idx], sx[sidx]])
            y = np.concatenate([ty[idx], sy[sidx]])
            raw.setdefault((k, "real+synthetic"), []).append(_probe(x, y, vx, vy, seed))
    results: dict = {"shots": list(shots), "seeds": len(seeds), "classes": [str(c) for c in classes],
                     "n_test": int(len(vy)), "probe": "logistic regression on standardised frozen features", "results": {}}
    for (k, arm), runs in raw.items():
        entry = {m: mean_ci([r[m] for r in runs], n_resamples=n_resamples).to_dict() for m in runs[0]}
        results["results"].setdefault(str(k), {})[arm] = entry
    if with_synthetic:
        results["n_synthetic"] = int(len(sx) if synthetic_per_class is None else synthetic_per_class * len(classes))
    return results
