"""Retrieval Recall@K with cosine similarity of embeddings.

With labels, a query is a hit at K when any of its K nearest gallery items shares its label
(class-level retrieval). Without labels, query i's match is gallery item i (paired retrieval, e.g.
image -> its caption, generated image -> its reference).
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from .bootstrap import DEFAULT_RESAMPLES, mean_ci


def recall_at_k(queries, gallery, *, query_labels=None, gallery_labels=None, ks=(1, 5, 10),
                exclude_self: bool = False, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Recall@K for each K in ``ks`` with 95 % bootstrap CIs over queries."""
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    require(q.ndim == 2 and g.ndim == 2 and q.shape[1] == g.shape[1], f"queries {q.shape} and gallery {g.shape} need the same width")
    paired = query_labels is None
    if paired:
        require(len(q) == len(g), "paired retrieval (no labels) needs as many gallery items as queries")
    else:
        require(gallery_labels is not None and len(query_labels) == len(q) and len(gallery_labels) == len(g),
                "give labels for every query and gallery item")
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    sims = qn @ gn.T
    if exclude_self:
        require(len(q) == len(g), "exclude_self needs queries and gallery to be the same set")
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)
    if paired:
        relevant = order == np.arange(len(q))[:, None]
    else:
        relevant = np.asarray(gallery_labels)[order] == np.asarray(query_labels)[:, None]
    out = {"mode": "paired" if paired else "label", "n_queries": int(len(q)), "gallery": int(len(g))}
    for k in ks:
        hits = relevant[:, : min(k, len(g))].any(1).astype(float)
        out[f"recall@{k}"] = mean_ci(hits, n_resamples=n_resamples).to_dict()
    return out
