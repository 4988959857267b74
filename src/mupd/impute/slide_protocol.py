"""Slide-level imputation under the same named protocols, on her2st pseudo-slides (real tissue, real
counts, but *not* TCGA slides): each section gives random contiguous regions as bags, the region's
summed counts as its bulk profile. Methods: training-mean, bag-mean features + ridge, attention-MIL.
Bags of the held-out section(s) are scored per gene across bags, per fold."""

from __future__ import annotations

import time

import numpy as np

from . import evaluate, protocols
from .ridge import RidgeReadout
from .slide import fit_mil, her2st_pseudo_slides, predict_mil

SLIDE_METHODS = ("mean", "bagmean-ridge", "abmil")


def run_slide_protocol(protocol: protocols.Protocol, table, tile_features: np.ndarray, *, n_bags_per_section: int = 24,
                       region: int = 32, epochs: int = 40, seed: int = 0, feature_name: str = "") -> dict:
    start = time.perf_counter()
    bags, bulk, sections = her2st_pseudo_slides(table, tile_features, n_bags_per_section=n_bags_per_section,
                                                region=region, seed=seed)
    folds = protocols.make_folds(protocol, sections)
    per_method = {m: [] for m in SLIDE_METHODS}
    for fold in folds:
        panel = protocols.select_genes(bulk[fold.train], table.genes, protocol.n_genes, protocol.gene_rule)
        y_tr = protocols.normalised_panel(bulk[fold.train], table.genes, panel)
        y_te = protocols.normalised_panel(bulk[fold.test], table.genes, panel)
        train_bags, test_bags = [bags[i] for i in fold.train], [bags[i] for i in fold.test]
        groups = np.asarray(sections)[fold.train]
        preds = {"mean": np.tile(y_tr.mean(0), (len(fold.test), 1))}
        readout = RidgeReadout(n_components=32).fit(np.stack([b.mean(0) for b in train_bags]), y_tr, groups)
        preds["bagmean-ridge"] = readout.predict(np.stack([b.mean(0) for b in test_bags]))
        model, mean, std, _ = fit_mil(train_bags, y_tr, epochs=epochs, seed=seed)
        preds["abmil"] = predict_mil(model, mean, std, test_bags)
        for m in SLIDE_METHODS:
            summary = evaluate.fold_summary(evaluate.gene_metrics(y_te, preds[m]), panel)
            per_method[m].append({"fold": fold.name, "n_train_bags": len(fold.train), "n_test_bags": len(fold.test), **summary})
    return {"protocol": protocol.to_dict(), "data": "her2st pseudo-slides: random contiguous regions of "
            f"{region} spots per bag, {n_bags_per_section} bags per section, bulk = summed raw counts (not TCGA slides)",
            "tile_features": feature_name,
            "methods": {m: {"summary": evaluate.across_folds(v), "folds": v} for m, v in per_method.items()},
            "seconds": round(time.perf_counter() - start, 2)}
