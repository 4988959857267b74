"""Run every spot-level method and baseline under a named protocol, fold by fold, in one process.

Methods (names used in results and on the command line):

* ``mean``               training-mean predictor (baseline; every r is undefined, counted as 0)
* ``pixels-ridge``       raw pixels (16x16 RGB) -> PCA -> ridge (baseline)
* ``untrained-ridge``    the aligned tower's CNN class, random weights -> PCA -> ridge (baseline)
* ``aligned-ridge``      (a) frozen features of the fold's aligned image tower -> PCA -> ridge
* ``aligned-retrieval``  (c) BLEEP-style: nearest training spots in the aligned image<->RNA space
* ``finetuned``          (b) the fold's aligned image tower trained end to end with a regression head
* ``encoder-ridge``      (a) with any registry image encoder (UNI, Virchow2, timm, ...; ``encoder`` +
  ``encoder_path`` in the settings): frozen pretrained features -> PCA -> ridge (HEST-Benchmark's read-out)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import require
from . import evaluate, protocols
from .features import encoder_features, pixel_features, registry_encoder, untrained_encoder
from .ridge import RidgeReadout

METHODS = ("mean", "pixels-ridge", "untrained-ridge", "aligned-ridge", "aligned-retrieval", "finetuned", "encoder-ridge",
           "finetuned-context")
# encoder-ridge needs pretrained weights the user names; finetuned-context costs ~2-3x finetuned
DEFAULT_METHODS = METHODS[:-2]
NEEDS_ALIGNMENT = {"aligned-ridge", "aligned-retrieval", "finetuned", "finetuned-context"}
FINETUNED = ("finetuned", "finetuned-context")


@dataclass
class RunSettings:
    image_size: int = 64  # crops (224 px full resolution) are resized to this side for every model
    align_samples: int = 2048  # contrastive pairs seen by each fold's alignment
    finetune_epochs: int = 3
    retrieval_k: int = 50
    n_components: int = 64
    seed: int = 0
    encoder: str | None = None  # encoder-ridge: a registry image encoder name ...
    encoder_path: str | None = None  # ... and its local weights folder (or an explicit hf-hub: id)
    context_pool: str = "mean"  # finetuned-context: how the neighbours' features are pooled (mean | attention)
    context_k: int = 4  # ... and how many nearest spots of the same section

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def load_table(protocol: protocols.Protocol, root, image_size: int, max_spots: int | None = None):
    """The protocol's spots; spots with zero total counts are dropped (log1p-CPM is undefined) and reported."""
    from ..data.spatial import load_her2st

    protocols.check_data(protocol, root)
    table = load_her2st(root, protocol.sections, crop=protocol.crop_px, size=image_size, max_spots=max_spots)
    from .spots import drop_empty, refuse_outside

    refuse_outside(table, f"her2st {root}")
    return drop_empty(table)


def run_protocol(protocol: protocols.Protocol, table, methods=DEFAULT_METHODS, settings: RunSettings | None = None,
                 progress: bool = True, cache: dict | None = None) -> dict:
    """Every method on every fold; returns the result dict (protocol resolved, per-fold, summary).
    ``cache`` may be shared between protocols over the same table: a fold with exactly the same
    training spots (her2st-lopo's patient-B fold is her2st-loso's B4 fold) reuses the trained models."""
    from tqdm.auto import tqdm

    settings = settings or RunSettings()
    unknown = [m for m in methods if m not in METHODS]
    require(not unknown, f"unknown imputation method(s) {unknown}; known: {list(METHODS)}")
    require("encoder-ridge" not in methods or settings.encoder, "method encoder-ridge needs an encoder (--encoder NAME "
                                                                "--encoder-path DIR, e.g. uni with its weights folder)")
    start = time.perf_counter()
    folds = protocols.make_folds(protocol, table.section)
    cache = {} if cache is None else cache
    per_method = {m: [] for m in methods}
    timings = {m: 0.0 for m in methods}
    timings["alignment"] = 0.0
    for fold in tqdm(folds, desc=f"impute {protocol.name}", unit="fold", disable=not progress):
        outcome = run_fold(protocol, table, fold, methods, settings, cache, timings)
        for m in methods:
            per_method[m].append(outcome[m])
    return {
        "protocol": protocol.to_dict(), "settings": settings.to_dict(),
        "data": {"n_spots": len(table), "sections": sorted(set(table.section)),
                 "spots_per_section": {s: int(table.section.count(s)) for s in sorted(set(table.section))},
                 "skipped": table.skipped, "n_genes_in_table": len(table.genes)},
        "folds": [{"name": f.name, "train_groups": f.train_groups, "test_groups": f.test_groups,
                   "n_train": int(len(f.train)), "n_test": int(len(f.test))} for f in folds],
        "methods": {m: {"summary": evaluate.across_folds(per_method[m]), "folds": per_method[m],
                        "top_genes": evaluate.top_genes(per_method[m])} for m in methods},
        "seconds": {**{k: round(v, 2) for k, v in timings.items()}, "total": round(time.perf_counter() - start, 2)},
    }


def run_fold(protocol, table, fold, methods, settings: RunSettings, cache: dict, timings: dict) -> dict:
    train, test = fold.train, fold.test
    panel = protocols.select_genes(table.counts[train], table.genes, protocol.n_genes, protocol.gene_rule, protocol.normalisation)
    y_train = protocols.normalised_panel(table.counts[train], table.genes, panel, protocol.normalisation)
    y_test = protocols.normalised_panel(table.counts[test], table.genes, panel, protocol.normalisation)
    groups = np.asarray(table.section)[train]
    model = None
    key = (train.tobytes(), test.tobytes(), settings.seed, protocol.n_genes, protocol.gene_rule)
    align_key = ("align", train.tobytes(), settings.seed, protocol.n_genes, settings.align_samples)  # not panel-specific
    if NEEDS_ALIGNMENT & set(methods) and align_key in cache:
        model = cache[align_key]
    elif NEEDS_ALIGNMENT & set(methods):
        t0 = time.perf_counter()
        from .aligned import train_fold_alignment

        model = train_fold_alignment(table.images[train], table.counts[train], table.genes, groups,
                                     n_genes=protocol.n_genes, total_samples=settings.align_samples, seed=settings.seed)
        timings["alignment"] += time.perf_counter() - t0
        cache[align_key] = model
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        if m in FINETUNED and (m,) + key in cache:
            pred, info = cache[(m,) + key]
        else:
            pred, info = predict_method(m, table, train, test, y_train, groups, model, settings, cache)
            if m in FINETUNED:
                cache[(m,) + key] = (pred, {**info, "reused_from_identical_fold": True})
        timings[m] += time.perf_counter() - t0
        summary = evaluate.fold_summary(evaluate.gene_metrics(y_test, pred), panel)
        out[m] = {"fold": fold.name, "n_train": int(len(train)), "n_test": int(len(test)), **info, **summary}
    return out


def context_neighbours(table, rows: np.ndarray, k: int):
    """Neighbours of ``rows`` among ``rows`` (indices local to them): the same section, nearest first."""
    from .finetune import spot_neighbours, spot_positions

    ids = [table.ids[i] for i in rows]
    return spot_neighbours(np.asarray(table.section)[rows], spot_positions(ids, table.coords[rows]), k)


def predict_method(method, table, train, test, y_train, groups, model, settings: RunSettings, cache: dict):
    """(prediction for the test spots, resolved hyper-parameters) for one method on one fold."""
    if method == "mean":
        return np.broadcast_to(y_train.mean(0), (len(test), y_train.shape[1])).copy(), {}
    if method.endswith("-ridge"):
        if method == "encoder-ridge":
            if "encoder" not in cache:  # pretrained and frozen: the same features in every fold
                cache["encoder"] = encoder_features(registry_encoder(settings), table.images, pooled_tokens=False)
            xtr, xte = cache["encoder"][train], cache["encoder"][test]
        elif method == "pixels-ridge":
            x = cache.setdefault("pixels", pixel_features(table.images))
            xtr, xte = x[train], x[test]
        elif method == "untrained-ridge":
            if "untrained" not in cache:
                cache["untrained"] = encoder_features(untrained_encoder(table.images.shape[1], settings.seed), table.images)
            xtr, xte = cache["untrained"][train], cache["untrained"][test]
        else:
            tower = model.towers["image"]
            xtr, xte = encoder_features(tower, table.images[train]), encoder_features(tower, table.images[test])
        readout = RidgeReadout(n_components=settings.n_components).fit(xtr, y_train, groups)
        return readout.predict(xte), readout.describe()
    if method == "aligned-retrieval":
        from .retrieval import RetrievalIndex, image_embeddings, rna_embeddings

        index = RetrievalIndex(rna_embeddings(model, table.counts[train], table.genes), y_train, settings.retrieval_k)
        return index.predict(image_embeddings(model, table.images[test])), {"k": index.k, "reference": "training fold spots"}
    if method in FINETUNED:
        from .finetune import fit_finetuned, predict_finetuned

        near = {"train": (None, None), "test": (None, None)}
        info = {"epochs": settings.finetune_epochs}
        if method == "finetuned-context":
            near = {name: context_neighbours(table, rows, settings.context_k) for name, rows in (("train", train), ("test", test))}
            info["context"] = {"pool": settings.context_pool, "k": settings.context_k, "neighbours": "nearest spots of the same section"}
        net, mean, std, history = fit_finetuned(model.towers["image"], table.images[train], y_train,
                                                epochs=settings.finetune_epochs, seed=settings.seed,
                                                context=settings.context_pool if method == "finetuned-context" else None,
                                                neighbours=near["train"][0], neighbour_mask=near["train"][1])
        info["train_loss"] = [round(v, 4) for v in history]
        return predict_finetuned(net, mean, std, table.images[test], *near["test"]), info
    raise AssertionError(method)
