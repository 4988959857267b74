"""Evaluation of generated pathology images.

``evaluate(real, fake, out=None, metrics=..., features=...)`` runs the whole job (``mupd evaluate``).
The parts: ``fid_kid``, ``frechet_distance``, ``kernel_distance``, ``precision_recall``, ``prdc``
(distribution), ``build_extractor`` (feature extractors by name), ``image_similarity``,
``text_image_alignment``, ``rna_agreement`` (conditional agreement), ``segment_nuclei``,
``nuclei_features``, ``compare_populations`` (cells), ``marker_correlation``, ``biomarker_auc``
(stains), ``few_shot``, ``recall_at_k``, ``bootstrap_ci``, ``mean_ci``, ``load_image_set``.
"""

from __future__ import annotations

import importlib

# name -> submodule; imported on first use so ``mupd --help`` (which imports mupd.metrics.cli) stays fast
_EXPORTS = {
    "bootstrap": ("Estimate", "bootstrap_ci", "mean_ci"),
    "cells": ("CellTyper", "NucleusSegmenter", "analyse_tiles", "compare_populations", "feature_wasserstein",
              "nuclei_features", "read_label_mask", "segment_nuclei"),
    "distribution": ("fid_kid", "frechet_distance", "kernel_distance", "prdc", "precision_recall"),
    "evaluate": ("evaluate",),
    "features": ("build_extractor",),
    "fewshot": ("few_shot",),
    "images": ("load_image_set",),
    "retrieval": ("recall_at_k",),
    "similarity": ("image_similarity", "per_gene_pearson", "rna_agreement", "text_image_alignment"),
    "stains": ("biomarker_auc", "marker_correlation"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mupd.metrics' has no attribute {name!r}")
