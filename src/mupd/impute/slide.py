"""Slide level (HE2RNA / SEQUOIA idea): bulk expression of a slide from a bag of tile features with
gated attention-MIL (``align.mil.GatedABMIL`` with one output per gene).

Bags come from TRIDENT/CLAM-style feature files (``features`` (N, D) and ``coords`` (N, 2) datasets
in an ``.h5``). Offline there are no TCGA slides, so ``her2st_pseudo_slides`` builds real stand-ins:
random *contiguous* regions of a her2st section (a seed spot and its nearest spots) are the bags,
their spots' crops the tiles, and the summed counts of the region the bulk profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import MupdError, require


def read_feature_h5(path: str | os.PathLike, expected_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, D) float32, coords (N, 2)) from a TRIDENT/CLAM feature file, validated."""
    import h5py

    path = Path(path)
    require(path.exists(), f"feature file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            require("features" in f, f"{path} has no 'features' dataset (TRIDENT/CLAM feature layout expected)")
            features = np.asarray(f["features"][:], dtype=np.float32)
            coords = np.asarray(f["coords"][:]) if "coords" in f else None
    except OSError as exc:
        raise MupdError(f"feature file {path} is not readable HDF5 ({exc})") from None
    if features.ndim == 3 and features.shape[0] == 1:  # CLAM sometimes stores (1, N, D)
        features = features[0]
    require(features.ndim == 2 and len(features) > 0, f"{path}: features must be a non-empty (N, D) array, got {features.shape}")
    if expected_dim is not None:
        require(features.shape[1] == expected_dim, f"{path}: features are {features.shape[1]}-wide but the model expects "
                                                   f"{expected_dim}; they come from another encoder — re-extract them")
    require(np.isfinite(features).all(), f"{path}: features contain NaN/inf values")
    if coords is not None:
        require(len(coords) == len(features), f"{path}: {len(coords)} coords but {len(features)} feature rows")
    return features, coords


@dataclass
class Bags:
    features: list  # per bag (n_i, D) float32
    targets: np.ndarray  # (B, G)
    groups: list  # section (or patient) of each bag
    meta: list


def her2st_pseudo_slides(table, spot_features: np.ndarray, *, n_bags_per_section: int = 20, region: int = 24,
                         seed: int = 0) -> tuple[list, np.ndarray, list]:
    """Bags of ``region`` contiguous spots (a random seed spot + its nearest neighbours) per section;
    returns (bag features, summed raw counts (B, G_all), section of each bag)."""
    rng = np.random.default_rng(seed)
    sections = np.asarray(table.section)
    bags, counts, groups = [], [], []
    for s in sorted(set(sections.tolist())):
        idx = np.where(sections == s)[0]
        require(len(idx) >= region, f"section {s} has {len(idx)} spots, fewer than region={region}")
        xy = table.coords[idx]
        for centre in rng.choice(len(idx), n_bags_per_section, replace=len(idx) < n_bags_per_section):
            nearest = idx[np.argsort(((xy - xy[centre]) ** 2).sum(1), kind="stable")[:region]]
            bags.append(spot_features[nearest].astype(np.float32))
            counts.append(table.counts[nearest].sum(0))
            groups.append(s)
    return bags, np.stack(counts), groups


def pad_bags(bags: list) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(b) for b in bags)
    x = torch.zeros(len(bags), n, bags[0].shape[1])
    mask = torch.zeros(len(bags), n, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, : len(b)] = torch.from_numpy(np.asarray(b, np.float32))
        mask[i, : len(b)] = True
    return x, mask


class MilRegressor(nn.Module):
    """Standardised tile features -> gated ABMIL -> one value per gene (z-scored targets)."""

    def __init__(self, in_dim: int, n_genes: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        from ..align.mil import GatedABMIL

        self.in_dim, self.n_genes = in_dim, n_genes
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.mil = GatedABMIL(in_dim, hidden=hidden, attention_dim=hidden // 2, out_dim=n_genes, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mil((x - self.feature_mean) / self.feature_std, mask)


def fit_mil(bags: list, targets: np.ndarray, *, epochs: int = 60, lr: float = 1e-3, batch_size: int = 16,
            hidden: int = 128, seed: int = 0):
    """Train on (bags, (B, G) targets); returns (model, target mean, target std, loss history)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    widths = {b.shape[1] for b in bags}
    require(len(widths) == 1, f"bags have different feature widths {sorted(widths)}; use features from one encoder")
    targets = np.asarray(targets, np.float64)
    mean, std = targets.mean(0), targets.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    y = torch.from_numpy(((targets - mean) / std).astype(np.float32))
    x, mask = pad_bags(bags)
    model = MilRegressor(x.shape[-1], y.shape[1], hidden)
    real = x[mask]
    model.feature_mean.copy_(real.mean(0))
    model.feature_std.copy_(real.std(0).clamp_min(1e-6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for i in range(0, len(x), batch_size):
            idx = order[i: i + batch_size]
            loss = nn.functional.mse_loss(model(x[idx], mask[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
    return model.eval(), mean, std, history


@torch.no_grad()
def predict_mil(model: MilRegressor, mean: np.ndarray, std: np.ndarray, bags: list) -> np.ndarray:
    widths = {b.shape[1] for b in bags}
    require(widths == {model.in_dim}, f"bags have feature width {sorted(widths)} but the model expects {model.in_dim}")
    x, mask = pad_bags(bags)
    return model(x, mask).numpy() * std + mean
