"""Cross-validated predictions: k folds by patient x seeds, one fitted head per (fold, seed).

Returns out-of-fold predictions as a pandas DataFrame (one row per patient, fold and seed), which
``evaluate`` turns into metrics. A survival row carries the risk score and whether the patient falls
above the *training* fold's median risk (the KM split must not look at the test fold).
Method ``lifelines-cox`` is lifelines' penalised ``CoxPHFitter`` on the same standardised inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MupdError, require
from .fit import FitConfig, Standardiser, predict, train_head
from .splits import Fold

TABULAR_SCALED = ("linear", "mlp", "lifelines-cox")


@dataclass
class HeadSpec:
    head: str = "mlp"  # linear | mlp | pathway-tokens | abmil | transmil | lifelines-cox
    loss: str = "nll"  # nll | cox | ce
    bins: int = 4
    hidden: int = 64
    dropout: float = 0.25
    penalizer: float = 0.1  # lifelines-cox only
    fit: FitConfig = field(default_factory=FitConfig)
    genes: list | None = None  # pathway-tokens only
    pathways: dict | None = None


def _lifelines_cox(x_train, time, event, x_test, penalizer: float):
    import pandas as pd
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    # A column constant in the training fold (e.g. sex in UCEC) makes the Hessian singular: drop it.
    varying = x_train.std(0) > 1e-8
    require(bool(varying.any()), "every input column is constant in a training fold; lifelines-cox has nothing to fit")
    x_train, x_test = x_train[:, varying], x_test[:, varying]
    cols = [f"x{j}" for j in range(x_train.shape[1])]
    frame = pd.DataFrame(x_train, columns=cols).assign(T=time, E=event.astype(int))
    try:
        model = CoxPHFitter(penalizer=penalizer).fit(frame, "T", "E")
    except ConvergenceError as exc:
        raise MupdError(f"lifelines CoxPHFitter did not converge ({str(exc).splitlines()[0][:80]}); "
                        f"raise --penalizer (now {penalizer})") from None
    risks = [np.asarray(model.predict_log_partial_hazard(pd.DataFrame(x, columns=cols))).ravel() for x in (x_train, x_test)]
    # lifelines' log partial hazard is (x - training mean) @ beta: the same map as a linear head, which is
    # what gets saved (zero weight on the columns dropped as constant).
    beta = np.zeros(len(varying))
    beta[varying] = model.params_.to_numpy()
    return risks[0], risks[1], beta, -float(model._norm_mean.to_numpy() @ model.params_.to_numpy())


def _as_linear_head(beta: np.ndarray, bias: float):
    import torch

    from .models import LinearHead

    head = LinearHead(len(beta), 1)
    with torch.no_grad():
        head.net[1].weight.copy_(torch.as_tensor(beta, dtype=torch.float32)[None])
        head.net[1].bias.fill_(bias)
    return head.eval()


def _survival_fold(x, mask, time, event, fold: Fold, spec: HeadSpec, seed: int):
    """(train risk, test risk, test survival curve or None, bin edges, fitted model or None, standardiser
    or None) for one fold and seed."""
    import torch

    from .models import build_head
    from .survival import discretize, risk_from_logits, survival_curve, time_bins

    tr, te = fold.train, fold.test
    # Tabular inputs are standardised on the training rows; pathway tokens need raw z-scores and bag
    # features stay as the encoder made them (padding would distort the statistics).
    scale = Standardiser(x[tr]) if spec.head in TABULAR_SCALED else None
    xtr, xte = (scale(x[tr]), scale(x[te])) if scale else (x[tr], x[te])
    if spec.head == "lifelines-cox":
        risk_tr, risk_te, beta, bias = _lifelines_cox(xtr, time[tr], event[tr], xte, spec.penalizer)
        return risk_tr, risk_te, None, None, _as_linear_head(beta, bias), scale
    edges = time_bins(time[tr], event[tr], spec.bins) if spec.loss == "nll" else None
    out_dim = len(edges) + 1 if spec.loss == "nll" else 1
    torch.manual_seed(seed)
    model = build_head(spec.head, x.shape[-1], out_dim, hidden=spec.hidden, dropout=spec.dropout,
                       genes=spec.genes, pathways=spec.pathways)
    target = {"time": torch.as_tensor(time[tr], dtype=torch.float32), "event": torch.as_tensor(event[tr])}
    if edges is not None:
        target["bins"] = torch.as_tensor(discretize(time[tr], edges))
    mtr = None if mask is None else torch.as_tensor(mask[tr])
    train_head(model, torch.as_tensor(xtr), target, spec.loss, spec.fit, mask=mtr, seed=seed)
    out_tr = predict(model, torch.as_tensor(xtr), mtr)
    out_te = predict(model, torch.as_tensor(xte), None if mask is None else torch.as_tensor(mask[te]))
    if spec.loss == "nll":
        return (risk_from_logits(out_tr).numpy(), risk_from_logits(out_te).numpy(), survival_curve(out_te).numpy(), edges,
                model, scale)
    return out_tr[:, 0].numpy(), out_te[:, 0].numpy(), None, None, model, scale


def head_meta(spec: HeadSpec, in_dim: int, out_dim: int, **extra) -> dict:
    """What ``saved.load_fitted`` needs to rebuild a fitted head (a lifelines Cox model is saved as the
    linear head it equals)."""
    cox = spec.head == "lifelines-cox"  # a log-risk output whatever --loss says
    return {"head": "linear" if cox else spec.head, "fitted_by": spec.head, "loss": "cox" if cox else spec.loss, "in_dim": int(in_dim), "out_dim": int(out_dim), "hidden": spec.hidden,
            "dropout": spec.dropout, "genes": spec.genes, "pathways": spec.pathways, **extra}


def survival_cv(x, time, event, case_ids, folds: list[Fold], spec: HeadSpec, seeds=(0,), mask=None, progress=None,
                store=None, meta: dict | None = None):
    """Out-of-fold risks for every fold and seed -> DataFrame(case_id, fold, seed, time, event, risk, high_risk).
    ``store`` (a ``saved.FoldStore``): each finished fit is saved there, and fits it already holds are reused."""
    import pandas as pd

    require(spec.loss in ("nll", "cox"), f"survival heads train with --loss nll or cox, not {spec.loss!r}")
    rows, curves = [], {}
    for seed in seeds:
        for fold in folds:
            saved = store.done(fold, seed) if store is not None else None
            if saved is not None:
                rows.append(saved)
                if progress is not None:
                    progress.update(1)
                continue
            risk_tr, risk_te, curve, edges, model, scale = _survival_fold(x, mask, time, event, fold, spec, seed)
            threshold = float(np.median(risk_tr))
            frame = pd.DataFrame({"case_id": case_ids[fold.test], "fold": fold.index, "seed": seed,
                                  "time": time[fold.test], "event": event[fold.test].astype(int),
                                  "risk": risk_te, "high_risk": (risk_te > threshold).astype(int)})
            if curve is not None:  # discrete-time heads: S after each bin and the fold's bin edges (for Brier)
                curves[(seed, fold.index)] = (edges, curve)
                for k in range(curve.shape[1]):
                    frame[f"surv_{k}"] = curve[:, k]
                for k, edge in enumerate(edges, 1):
                    frame[f"edge_{k}"] = edge
            if store is not None:
                out_dim = 1 if curve is None else curve.shape[1]
                store.save(fold, seed, frame, model, scale, head_meta(spec, x.shape[-1], out_dim, threshold=threshold,
                                                                      edges=None if edges is None else [float(e) for e in edges],
                                                                      **(meta or {})))
            rows.append(frame)
            if progress is not None:
                progress.update(1)
    return pd.concat(rows, ignore_index=True), curves


def classification_cv(x, labels, n_classes: int, case_ids, folds: list[Fold], spec: HeadSpec, seeds=(0,), mask=None,
                      progress=None, on_fit=None, store=None, meta: dict | None = None):
    """Out-of-fold class probabilities -> DataFrame(case_id, fold, seed, label, prob_0..prob_{K-1}).
    ``on_fit(fold, seed, model)`` sees each fitted head (e.g. to read a test bag's attention)."""
    import pandas as pd
    import torch

    from .models import build_head

    rows = []
    for seed in seeds:
        for fold in folds:
            saved = store.done(fold, seed) if store is not None and on_fit is None else None
            if saved is not None:
                rows.append(saved)
                if progress is not None:
                    progress.update(1)
                continue
            tr, te = fold.train, fold.test
            scale = Standardiser(x[tr]) if spec.head in TABULAR_SCALED else None
            scale_or_identity = scale or (lambda a: a)
            torch.manual_seed(seed)
            model = build_head(spec.head, x.shape[-1], n_classes, hidden=spec.hidden, dropout=spec.dropout,
                               genes=spec.genes, pathways=spec.pathways)
            counts = np.bincount(labels[tr], minlength=n_classes).astype(np.float64)
            weight = torch.as_tensor(len(tr) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
            target = {"label": torch.as_tensor(labels[tr]), "class_weight": weight}
            mtr = None if mask is None else torch.as_tensor(mask[tr])
            train_head(model, torch.as_tensor(scale_or_identity(x[tr])), target, "ce", spec.fit, mask=mtr, seed=seed)
            out = predict(model, torch.as_tensor(scale_or_identity(x[te])), None if mask is None else torch.as_tensor(mask[te]))
            prob = torch.softmax(out, dim=1).numpy()
            frame = pd.DataFrame({"case_id": case_ids[te], "fold": fold.index, "seed": seed, "label": labels[te]})
            for k in range(n_classes):
                frame[f"prob_{k}"] = prob[:, k]
            if store is not None:
                store.save(fold, seed, frame, model, scale, head_meta(spec, x.shape[-1], n_classes, **(meta or {})))
            rows.append(frame)
            if on_fit is not None:
                on_fit(fold, seed, model)
            if progress is not None:
                progress.update(1)
    return pd.concat(rows, ignore_index=True)
