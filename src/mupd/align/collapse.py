"""A guard against representation collapse in contrastive training.

Each check measures a batch of L2-normalised embeddings two ways:

* spread: the mean per-dimension standard deviation times sqrt(dim) — about 1 for embeddings spread
  over the sphere, 0 when every sample maps to the same point;
* effective rank (RankMe, Garrido et al. 2023): exp of the entropy of the normalised singular values
  of the *centred* embedding matrix — 1 when the samples vary along one direction only, up to
  min(B - 1, dim). Centred, so features that share a large common offset (ReLU outputs, stage-2 tile
  features) are not mistaken for collapsed; a batch with no spread at all counts as rank 1.

A check is bad when either falls below its threshold; ``patience`` bad checks in a row stop the run
with a ``MupdError`` that says where, by how much, and what to try.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import MupdError


@torch.no_grad()
def embedding_health(embeddings: torch.Tensor) -> dict[str, float]:
    """{"std": spread in [0, ~1], "rank": effective rank in [1, min(B, dim)]} of a (B, dim) batch."""
    z = F.normalize(embeddings.detach().float(), dim=-1)
    std = float(z.std(0).mean()) * math.sqrt(z.shape[1])
    if std < 1e-4:  # one point: the centred matrix is rounding noise, whose "rank" means nothing
        return {"std": std, "rank": 1.0}
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return {"std": std, "rank": float(torch.exp(entropy))}


@dataclass
class CollapseGuard:
    min_std: float = 0.05
    min_rank: float = 1.5
    patience: int = 3
    hint: str = ""  # what to try, appended to the error
    streak: int = 0
    last: dict = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.streak == 0

    def check(self, step: int, samples: int, embeddings: dict[str, torch.Tensor]) -> dict[str, dict]:
        """Measure each named batch of embeddings; raise after ``patience`` consecutive bad checks."""
        health = {name: embedding_health(e) for name, e in embeddings.items() if e is not None and len(e) >= 2}
        bad = {n: h for n, h in health.items() if h["std"] < self.min_std or h["rank"] < self.min_rank}
        self.streak = self.streak + 1 if bad else 0
        self.last = health
        if self.streak >= self.patience:
            values = "; ".join(f"{n} embedding std {h['std']:.3g} (min {self.min_std}), effective rank {h['rank']:.3g} "
                               f"(min {self.min_rank})" for n, h in bad.items())
            raise MupdError(f"embedding collapse detected at step {step} ({samples} samples), {self.patience} checks in a "
                            f"row: {values}. {self.hint}")
        return health
