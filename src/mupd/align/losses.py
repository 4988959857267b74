"""Contrastive and distillation losses for the shared embedding space.

``info_nce`` is CLIP's symmetric cross-entropy over cosine similarities scaled by a learnable
temperature (``LogitScale``: log-parameterised, initialised to 1/0.07, clamped at 100 as in CLIP).
"""

from __future__ import annotations

import math
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require


class LogitScale(nn.Module):
    """exp(s) with s learnable; s starts at log(1/0.07) and is clamped to log(max_scale)."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log = math.log(max_scale)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log).exp()


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` is the positive of row i of ``b``, all other rows negatives.

    ``positives`` (B, B) bool, optional: further pairs that are positives too (e.g. samples sharing
    an identical caption); the target then spreads uniformly over each row's positives, so
    duplicates are not pushed apart as false negatives.
    """
    require(a.shape[0] == b.shape[0], f"info_nce: {a.shape[0]} vs {b.shape[0]} samples; pairs must align")
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = scale * a @ b.T
    if positives is None:
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    positives = positives.to(a.device).bool() | torch.eye(len(a), dtype=torch.bool, device=a.device)
    target = positives.float() / positives.sum(1, keepdim=True)
    target_t = positives.T.float() / positives.T.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target_t))


def same_text_positives(texts: list[str]) -> torch.Tensor:
    """(B, B) True where two samples carry the identical (case/space-normalised) text."""
    keys = [" ".join(t.lower().split()) for t in texts]
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    codes = torch.tensor([ids[k] for k in keys])
    return codes[:, None] == codes[None, :]


def multi_pair_loss(embeddings: dict[str, torch.Tensor], scale, pairs=None, present: dict[str, torch.Tensor] | None = None,
                    positives: torch.Tensor | None = None):
    """Mean InfoNCE over modality pairs (default: every pair present). ``present[m]`` (B,) bool marks
    samples that have modality m; each pair uses only samples that have both. ``positives`` (B, B)
    marks extra positive pairs (see ``info_nce``)."""
    pairs = pairs or list(combinations(sorted(embeddings), 2))
    losses = {}
    for m1, m2 in pairs:
        keep = None
        if present is not None:
            keep = present.get(m1, torch.ones(len(embeddings[m1]), dtype=torch.bool, device=embeddings[m1].device))
            keep = keep & present.get(m2, torch.ones_like(keep))
        a, b = (embeddings[m1], embeddings[m2]) if keep is None else (embeddings[m1][keep], embeddings[m2][keep])
        pos = positives if (positives is None or keep is None) else positives[keep][:, keep]
        if a.shape[0] >= 2:
            losses[f"{m1}-{m2}"] = info_nce(a, b, scale, pos)
    require(bool(losses), "no modality pair has 2 or more samples in this batch")
    return torch.stack(list(losses.values())).mean(), {k: float(v.detach()) for k, v in losses.items()}


def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean (1 - cos) between student and (detached) teacher vectors over real tokens."""
    cos = F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)
    if mask is None:
        return (1 - cos).mean()
    weights = mask.float()
    return ((1 - cos) * weights).sum() / weights.sum().clamp_min(1.0)
