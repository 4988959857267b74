"""BLEEP-style imputation (Xie et al. 2023): embed the query crop with the aligned image tower, find
the ``k`` reference spots whose *expression* embeddings (aligned RNA tower) are most similar, and
predict the mean of their measured expression. The reference set is the training fold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import require


@dataclass
class RetrievalIndex:
    reference_embeddings: np.ndarray  # (R, D), L2-normalised RNA embeddings of the reference spots
    reference_expression: np.ndarray  # (R, G), normalised panel expression of the same spots
    k: int = 50

    def __post_init__(self):
        require(len(self.reference_embeddings) == len(self.reference_expression),
                "retrieval index: embeddings and expression differ in number of reference spots")
        require(self.k >= 1, f"retrieval k must be >= 1, got {self.k}")

    def predict(self, query_embeddings: np.ndarray) -> np.ndarray:
        q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(query_embeddings), dtype=torch.float32), dim=-1)
        r = torch.as_tensor(self.reference_embeddings, dtype=torch.float32)
        k = min(self.k, len(r))
        top = (q @ r.T).topk(k, dim=1).indices.numpy()
        return self.reference_expression[top].mean(1)


@torch.no_grad()
def rna_embeddings(model, counts: np.ndarray, genes) -> np.ndarray:
    """The aligned RNA tower's embedding of raw counts (normalised by the model's own vocabulary)."""
    x, _ = model.vocabulary.transform(counts, genes)
    tower = model.towers["rna"].eval()
    return torch.cat([tower.embed(torch.from_numpy(x[i: i + 512])) for i in range(0, len(x), 512)]).numpy()


@torch.no_grad()
def image_embeddings(model, images: np.ndarray) -> np.ndarray:
    from .features import encoder_features

    return encoder_features(model.towers["image"], images, pooled_tokens=False)
