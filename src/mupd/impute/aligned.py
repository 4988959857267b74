"""A fold's own image<->RNA alignment (``mupd align``'s towers and trainer), trained on the fold's
training spots only, so the aligned features and the retrieval index never saw the held-out fold."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .features import as_uint8_batch


def train_fold_alignment(images: np.ndarray, counts: np.ndarray, genes, groups, *, n_genes: int = 250,
                         total_samples: int = 2048, seed: int = 0, out: str | os.PathLike | None = None,
                         progress: bool = False):
    """Contrastive image<->RNA towers (preset ``her2st-image-rna``) on these spots; returns the AlignModel
    (its RNA vocabulary is fitted on the same spots and attached as ``model.vocabulary``)."""
    from ..align.config import preset
    from ..align.data import PairData
    from ..align.train import train_align
    from ..data.expression import GeneVocabulary

    vocabulary = GeneVocabulary.fit(counts, genes, normalisation="log1p_cpm", top_k=n_genes)
    rna, _ = vocabulary.transform(counts, genes)
    side = int(images.shape[1])
    data = PairData({"image": as_uint8_batch(images), "rna": torch.from_numpy(rna)}, [str(g) for g in groups],
                    vocabulary=vocabulary)
    config = preset("her2st-image-rna", image_size=side, n_genes=n_genes, total_samples=total_samples, seed=seed,
                    batch_size=min(64, len(counts)),
                    log_every=max(64, total_samples // 4), checkpoint_every=total_samples, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model = train_align(config, Path(out) if out else Path(tmp) / "align", data=data, progress=progress)
    model.vocabulary = vocabulary
    model.align_config = config.to_dict()
    return model.eval().requires_grad_(False)
