"""How good is a shared space: cross-modal retrieval Recall@K, zero-shot classification from text
prompts, linear probes (scikit-learn LogisticRegression) and ridge read-outs of expression — always
with train and test drawn from different patients / sections / slides.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import require


def check_disjoint(train_groups, test_groups) -> None:
    """Refuse a split in which a patient / section / slide appears on both sides."""
    shared = sorted(set(map(str, train_groups)) & set(map(str, test_groups)))
    require(not shared, f"train and test share {len(shared)} group(s) (e.g. {shared[:3]}); split by patient/section instead")


def _unit(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float()
    return F.normalize(x, dim=-1)


def recall_at_k(queries, gallery, ks=(1, 5, 10)) -> dict[int, float]:
    """Query i's match is gallery item i; Recall@K = fraction of queries whose match ranks in the top K
    by cosine similarity (ties count against the match)."""
    q, g = _unit(queries), _unit(gallery)
    require(q.shape == g.shape, f"recall_at_k: queries {tuple(q.shape)} and gallery {tuple(g.shape)} must be paired row by row")
    sim = q @ g.T
    own = sim.diagonal().unsqueeze(1)
    rank = (sim >= own).sum(1) - 1  # items scoring at least as well as the match, excluding itself
    return {int(k): float((rank < k).float().mean()) for k in ks}


def chance_recall(n: int, k: int) -> float:
    return min(1.0, k / n)


def zero_shot_accuracy(embeddings, prompt_embeddings, labels) -> float:
    """Predict the class whose prompt embedding is most similar; labels index the prompts."""
    pred = (_unit(embeddings) @ _unit(prompt_embeddings).T).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def linear_probe_accuracy(train_x, train_y, test_x, test_y, C: float = 1.0, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(train_x))
    clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(np.asarray(train_x)), np.asarray(train_y))
    return float(clf.score(scaler.transform(np.asarray(test_x)), np.asarray(test_y)))


def ridge_gene_pearson(train_x, train_y, test_x, test_y, alpha: float = 1.0) -> np.ndarray:
    """Per-gene Pearson r between a ridge read-out of features and the true expression (test set)."""
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha).fit(np.asarray(train_x), np.asarray(train_y))
    pred = model.predict(np.asarray(test_x))
    truth = np.asarray(test_y)
    pc, tc = pred - pred.mean(0), truth - truth.mean(0)
    denom = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    return np.where(denom > 0, (pc * tc).sum(0) / np.where(denom > 0, denom, 1), 0.0)


@torch.no_grad()
def embed_all(tower, items, batch_size: int = 256) -> torch.Tensor:
    """Embed a whole modality (uint8 image tensor, list of texts, expression tensor) in batches."""
    tower.eval()
    out = [tower.embed(items[i: i + batch_size]) for i in range(0, len(items), batch_size)]
    return torch.cat(out).cpu()


def evaluate_pairs(model, train, test, ks=(1, 5, 10)) -> dict:
    """Every applicable measure for an ``AlignModel`` on a train/test ``PairData`` split."""
    check_disjoint(train.groups, test.groups)
    metrics: dict = {"n_train": len(train), "n_test": len(test)}
    test_emb = {m: embed_all(model.towers[m], test.items[m]) for m in model.towers if m in test.items}
    names = sorted(test_emb)
    for a in names:
        for b in names:
            if a != b:
                recall = recall_at_k(test_emb[a], test_emb[b], ks)
                metrics[f"{a}->{b}"] = {f"R@{k}": v for k, v in recall.items()}
                metrics[f"{a}->{b}"].update({f"chance@{k}": chance_recall(len(test), k) for k in ks})
    if test.labels is not None and test.class_prompts and "text" in model.towers:
        prompts = embed_all(model.towers["text"], list(test.class_prompts))
        for m in names:
            if m != "text":
                metrics[f"zero_shot_{m}"] = zero_shot_accuracy(test_emb[m], prompts, test.labels)
    if test.labels is not None and train.labels is not None:
        for m in names:
            train_emb = embed_all(model.towers[m], train.items[m])
            metrics[f"linear_probe_{m}"] = linear_probe_accuracy(train_emb, train.labels, test_emb[m], test.labels)
    return metrics
