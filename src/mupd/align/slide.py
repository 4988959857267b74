"""Slide-level alignment and mSTAR's two stages.

Stage 1 (TANGLE / mSTAR): a MIL aggregator (gated ABMIL or TransMIL) turns a bag of patch features
into a slide embedding, aligned by symmetric InfoNCE with the slide's RNA and/or report embeddings.

Stage 2 (mSTAR "self-taught"): the trained aggregator is frozen; it re-embeds the patch features of
an EMA teacher copy of the patch encoder into context-aware per-patch targets, and the (student)
patch encoder learns, through a small projector, to reproduce them (1 - cosine, on batch-centred
vectors by default so a constant student output cannot score). The aggregator's slide-level
multimodal knowledge thus flows back into the patch encoder.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require
from .losses import LogitScale, cosine_distillation_loss, multi_pair_loss
from .mil import build_aggregator


class SlideAligner(nn.Module):
    """Aggregator over patch features + towers of the other modalities, one shared space.

    Tile features are standardised with the training tiles' mean/std (buffers, saved with the model)."""

    def __init__(self, feature_dim: int, towers: dict[str, nn.Module], aggregator: str = "abmil", hidden: int = 128,
                 embed_dim: int = 128, init_temperature: float = 0.07):
        super().__init__()
        require(bool(towers), "slide alignment needs at least one other modality tower (rna and/or text)")
        self.feature_dim = feature_dim
        self.aggregator = build_aggregator(aggregator, feature_dim, hidden=hidden, out_dim=embed_dim)
        self.towers = nn.ModuleDict(towers)
        self.logit_scale = LogitScale(init_temperature)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Mean/std per feature over the real training tiles (N, D)."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def _standardise(self, bags: torch.Tensor) -> torch.Tensor:
        return (bags - self.feature_mean) / self.feature_std

    def embed_slides(self, bags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.aggregator(self._standardise(bags), mask), dim=-1)

    def token_features(self, bags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The aggregator's per-patch features (the stage-2 distillation targets)."""
        return self.aggregator.token_features(self._standardise(bags), mask)

    def embed(self, bags: torch.Tensor, mask: torch.Tensor | None, others: dict) -> dict[str, torch.Tensor]:
        emb = {"slide": self.embed_slides(bags, mask)}
        emb.update({m: self.towers[m].embed(v) for m, v in others.items() if m in self.towers})
        return emb

    def loss(self, bags: torch.Tensor, mask: torch.Tensor | None, others: dict) -> tuple[torch.Tensor, dict]:
        """InfoNCE between slides and every other modality (and between those modalities)."""
        return multi_pair_loss(self.embed(bags, mask, others), self.logit_scale())


def patch_features(encoder: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, H, W) uint8 bags -> (B, N, width): the encoder's mean token per patch."""
    b, n = patches.shape[:2]
    tokens, mask = encoder.encode(patches.flatten(0, 1))
    weights = mask.float().unsqueeze(-1)
    pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
    return pooled.view(b, n, -1)


class SelfTaughtDistiller(nn.Module):
    """mSTAR stage 2. ``student`` is the patch encoder being trained; ``aggregator`` is frozen."""

    def __init__(self, student: nn.Module, aggregator: nn.Module, ema_decay: float = 0.99, centre: bool = True):
        super().__init__()
        self.centre = centre
        self.student = student
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.aggregator = aggregator.eval().requires_grad_(False)
        with torch.no_grad():
            probe = self.aggregator.token_features(torch.zeros(1, 1, student.width))
        self.projector = nn.Linear(student.width, probe.shape[-1])
        self.ema_decay = ema_decay

    def trainable_parameters(self):
        return list(self.student.parameters()) + list(self.projector.parameters())

    def loss(self, patches: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``patches``: (B, N, 3, H, W) uint8 bags, ``mask`` (B, N) True = real patch."""
        require(patches.ndim == 5, f"stage-2 patches must be (B, N, 3, H, W) bags; got {tuple(patches.shape)}")
        with torch.no_grad():
            targets = self.aggregator.token_features(patch_features(self.teacher, patches), mask)
        student = self.projector(patch_features(self.student, patches))
        if self.centre:
            # Targets are ReLU features with a large shared component: the plain cosine is nearly met by a
            # student that outputs that component for every tile (a collapse, which the EMA teacher then
            # follows). Centred over the batch's real tiles, a constant output scores 0.
            real = torch.ones(targets.shape[:2], dtype=torch.bool, device=targets.device) if mask is None else mask.bool()
            targets = targets - targets[real].mean(0)
            student = student - student[real].mean(0)
        return cosine_distillation_loss(student, targets, mask)

    @torch.no_grad()
    def update_teacher(self) -> None:
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.lerp_(s, 1 - self.ema_decay)
