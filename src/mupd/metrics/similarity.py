"""Conditional agreement: does a generated image match what it was conditioned on?

- image-image: cosine of embeddings, each generated image vs its reference image;
- text-image: cosine of image and text embeddings in an aligned (contrastive) space;
- RNA-image: expression predicted from the generated image by a regressor vs the conditioning
  expression, Pearson r per gene across samples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import require
from .bootstrap import DEFAULT_RESAMPLES, mean_ci


def paired_cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two (N,D) embedding arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    require(a.shape == b.shape, f"paired embeddings must have equal shapes, got {a.shape} and {b.shape}")
    require(np.isfinite(a).all() and np.isfinite(b).all(), "embeddings contain NaN/inf")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def image_similarity(generated_embeddings, reference_embeddings, *, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Mean cosine similarity of each generated image to its reference, with a 95 % CI."""
    cos = paired_cosine(generated_embeddings, reference_embeddings)
    return {"cosine": mean_ci(cos, n_resamples=n_resamples).to_dict(), "n": int(len(cos))}


def text_image_alignment(image_embeddings, text_embeddings, *, n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """Cosine of matched image/text pairs in an aligned space, and how often the matched caption
    outranks every other caption in the batch (top-1 retrieval)."""
    cos = paired_cosine(image_embeddings, text_embeddings)
    a = np.asarray(image_embeddings, np.float64)
    b = np.asarray(text_embeddings, np.float64)
    sims = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    top1 = (sims.argmax(1) == np.arange(len(a))).astype(float)
    return {"cosine": mean_ci(cos, n_resamples=n_resamples).to_dict(), "top1": float(top1.mean()), "n": int(len(cos))}


def per_gene_pearson(predicted, target) -> np.ndarray:
    """Pearson r per column (gene) across rows (samples); NaN for a constant gene."""
    p, t = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    require(p.shape == t.shape and p.ndim == 2, f"predicted {p.shape} and conditioning {t.shape} expression must be equal (N,G)")
    require(np.isfinite(p).all() and np.isfinite(t).all(), "expression contains NaN/inf; normalise it with a GeneVocabulary first")
    pc, tc = p - p.mean(0), t - t.mean(0)
    denom = np.sqrt((pc**2).sum(0) * (tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (pc * tc).sum(0) / denom, np.nan)


def rna_agreement(generated_images, conditioning_expression, regressor: Callable, *, genes=None,
                  n_resamples: int = DEFAULT_RESAMPLES) -> dict:
    """``regressor(images) -> (N,G)`` predicted expression, compared per gene with the expression
    the images were generated from."""
    predicted = np.asarray(regressor(generated_images))
    r = per_gene_pearson(predicted, conditioning_expression)
    finite = r[np.isfinite(r)]
    genes = list(genes) if genes is not None else [str(i) for i in range(len(r))]
    require(len(genes) == len(r), f"{len(genes)} gene names for {len(r)} predicted genes")
    order = np.argsort(-np.nan_to_num(r, nan=-2))
    return {
        "pearson_mean": mean_ci(finite, n_resamples=n_resamples).to_dict(),
        "pearson_median": float(np.median(finite)) if finite.size else float("nan"),
        "genes": int(len(r)),
        "constant_genes": int(len(r) - finite.size),
        "top_genes": [{"gene": genes[i], "r": float(r[i])} for i in order[:10] if np.isfinite(r[i])],
        "per_gene": {g: (float(v) if np.isfinite(v) else None) for g, v in zip(genes, r)},
    }
