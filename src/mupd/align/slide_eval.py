"""Evaluation of slide-level alignment on held-out sections (never seen in training):

* retrieval: slide -> RNA and RNA -> slide Recall@K against chance; slide -> report: the top report
  is the bag's own (templated reports repeat, so any identical report counts);
* downstream heads (``mupd.heads``): a linear classification head, cross-validated over the held-out
  bags (disjoint regions; folds stratified, each bag its own group), predicting whether a bag's marker
  score (immune, stroma, ERBB2) is above the held-out median — on the aligned slide embeddings vs on
  the mean of the bag's frozen tile features (the input the aggregator started from);
* ridge read-out of the bag's bulk RNA (vocabulary genes) from either representation, fitted on the
  training bags: per-gene Pearson r on the held-out bags.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import require
from .evaluate import chance_recall, check_disjoint, recall_at_k, ridge_gene_pearson
from .slide_data import SlideData

HEAD_MARKERS = ("tumour", "immune", "stroma", "ERBB2")


def bag_means(data: SlideData) -> np.ndarray:
    m = data.mask.unsqueeze(-1).float()
    return ((data.features * m).sum(1) / m.sum(1)).numpy()


@torch.no_grad()
def slide_embeddings(model, data: SlideData, batch_size: int = 256) -> dict[str, torch.Tensor]:
    model.eval()
    out: dict[str, list] = {}
    for i in range(0, len(data), batch_size):
        emb = model.embed(data.features[i: i + batch_size], data.mask[i: i + batch_size],
                          {m: data.items[m][i: i + batch_size] for m in model.towers})
        for m, v in emb.items():
            out.setdefault(m, []).append(v)
    return {m: torch.cat(v) for m, v in out.items()}


def heads_probe(x: np.ndarray, data: SlideData, folds: int = 5, seed: int = 0, epochs: int = 100) -> dict:
    """Linear head (mupd.heads), k-fold over held-out bags: macro AUC / balanced accuracy per marker."""
    from ..heads.crossval import HeadSpec, classification_cv
    from ..heads.evaluate import classification_metrics
    from ..heads.fit import FitConfig
    from ..heads.splits import patient_folds

    ids = np.array([f"bag{i:04d}" for i in range(len(data))])
    spec = HeadSpec(head="linear", loss="ce", fit=FitConfig(epochs=epochs, lr=1e-2, weight_decay=1e-3, batch_size=16))
    out = {}
    for marker in HEAD_MARKERS:
        if marker not in data.scores:
            continue
        score = data.scores[marker]
        labels = (score > np.median(score)).astype(np.int64)
        if min(np.bincount(labels, minlength=2)) < folds:
            continue
        split = patient_folds(ids, labels, folds, seed=seed)
        pred = classification_cv(x.astype(np.float32), labels, 2, ids, split, spec, (seed,))
        metrics = classification_metrics(pred, ["low", "high"])
        out[marker] = {"macro_auc": metrics["macro_auc"]["value"], "balanced_accuracy": metrics["balanced_accuracy"]["value"]}
    return out


@torch.no_grad()
def zero_shot_reports(model, data: SlideData) -> float:
    """PCam bags: metastasis or not from the text tower alone — each class prompt is the mean embedding of
    every report wording of that class (prompt ensembling), the bag takes the closer class."""
    from .slide_data import PCAM_REPORTS

    n = int(data.mask[0].sum())
    prototypes = []
    for label in (0, 1):
        texts = sorted({t.format(k=k, n=n) for t in PCAM_REPORTS[label] for k in range(1, 5)})
        prototypes.append(torch.nn.functional.normalize(model.towers["text"].embed(texts).mean(0), dim=0))
    emb = model.embed_slides(data.features, data.mask)
    pred = (emb @ torch.stack(prototypes).T).argmax(1).numpy()
    return float((pred == np.asarray(data.levels["tumour"])).mean())


def ridge_readout(train_x, train_y, test_x, test_y) -> dict:
    r = ridge_gene_pearson(train_x, train_y, test_x, test_y, alpha=10.0)
    return {"mean_pearson": float(np.mean(r)), "genes_r_above_0": int((r > 0).sum()), "n_genes": int(len(r))}


def evaluate_slides(model, train: SlideData, test: SlideData, ks=(1, 5, 10), folds: int = 5) -> dict:
    check_disjoint(train.groups, test.groups)
    require(len(test) >= 2, f"only {len(test)} held-out bags; use more test sections or a smaller region")
    emb, emb_train = slide_embeddings(model, test), slide_embeddings(model, train)
    metrics: dict = {"n_train_bags": len(train), "n_test_bags": len(test), "test_groups": sorted(set(test.groups))}
    if "rna" in emb:
        for a, b in (("slide", "rna"), ("rna", "slide")):
            metrics[f"{a}->{b}"] = {f"R@{k}": v for k, v in recall_at_k(emb[a], emb[b], ks).items()}
            metrics[f"{a}->{b}"].update({f"chance@{k}": chance_recall(len(test), k) for k in ks})
    if "text" in emb:
        # A report is "right" when it says the same as the bag's own: the same text (her2st) or the
        # same finding, metastasis or not (PCam reports also count tiles, in varied words).
        keys = [str(y) for y in test.levels["tumour"]] if "tumour" in test.levels else list(test.items["text"])
        top = (emb["slide"] @ emb["text"].T).argmax(1).tolist()
        metrics["slide->report_top1"] = float(np.mean([keys[j] == keys[i] for i, j in enumerate(top)]))
        metrics["slide->report_chance"] = float(np.mean([keys.count(k) / len(keys) for k in keys]))
        if "tumour" in test.levels:
            metrics["zero_shot_tumour"] = zero_shot_reports(model, test)
    slide_tr, slide_te = emb_train["slide"].numpy(), emb["slide"].numpy()
    feat_tr, feat_te = bag_means(train), bag_means(test)
    if "rna" in test.items:
        y_tr, y_te = train.items["rna"].numpy(), test.items["rna"].numpy()
        metrics["rna_readout"] = {"slide_embedding": ridge_readout(slide_tr, y_tr, slide_te, y_te),
                                  "bag_mean_features": ridge_readout(feat_tr, y_tr, feat_te, y_te)}
    metrics["heads_linear"] = {"slide_embedding": heads_probe(slide_te, test, folds),
                               "bag_mean_features": heads_probe(feat_te, test, folds)}
    return metrics


@torch.no_grad()
def distilled_bag_features(encoder, data: SlideData) -> np.ndarray:
    """Mean of the encoder's per-tile features over each bag's real tiles."""
    encoder.eval()
    out = []
    for i in range(len(data)):
        feats = patch_features_of(encoder, data, i)
        out.append(feats.mean(0).numpy())
    return np.stack(out)


def patch_features_of(encoder, data: SlideData, i: int) -> torch.Tensor:
    from .slide import patch_features

    real = data.mask[i]
    return patch_features(encoder, data.patches([i]))[0][real]


def evaluate_distilled(before, after, train: SlideData, test: SlideData, folds: int = 5) -> dict:
    """Stage 2: bag-mean features of the tile encoder before vs after distillation (ridge, heads)."""
    check_disjoint(train.groups, test.groups)
    out = {}
    for name, encoder in (("before", before), ("after", after)):
        tr, te = distilled_bag_features(encoder, train), distilled_bag_features(encoder, test)
        out[name] = {"heads_linear": heads_probe(te, test, folds)}
        if "rna" in test.items:
            out[name]["rna_readout"] = ridge_readout(tr, train.items["rna"].numpy(), te, test.items["rna"].numpy())
    return out
