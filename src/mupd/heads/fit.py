"""Fitting one head on one training fold (Adam, fixed epochs, seeded), and predicting with it.

Fixed epochs rather than early stopping, as PORPOISE/SurvPath do: with ~300 patients per cohort a
validation split would cost a fifth of the events. The Cox loss needs whole risk sets, so it trains
full-batch; the NLL and cross-entropy losses use shuffled minibatches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..errors import require
from .survival import cox_loss, nll_survival_loss

LOSSES = ("nll", "cox", "ce")


@dataclass
class FitConfig:
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    alpha: float = 0.4  # NLL weight on uncensored rows (PORPOISE's default)

    def to_dict(self) -> dict:
        return asdict(self)


class Standardiser:
    """Per-column mean/std from the training rows only (no test statistics leak into the fit)."""

    def __init__(self, x: np.ndarray):
        flat = x.reshape(-1, x.shape[-1])
        self.mean = flat.mean(0)
        self.std = np.where(flat.std(0) > 1e-8, flat.std(0), 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def _loss(kind: str, out: torch.Tensor, target: dict, rows, config: FitConfig) -> torch.Tensor:
    if kind == "nll":
        return nll_survival_loss(out, target["bins"][rows], target["event"][rows], alpha=config.alpha)
    if kind == "cox":
        return cox_loss(out[:, 0], target["time"][rows], target["event"][rows])
    return nn.functional.cross_entropy(out, target["label"][rows], weight=target.get("class_weight"))


def train_head(model: nn.Module, x: torch.Tensor, target: dict, loss: str, config: FitConfig, *,
               mask: torch.Tensor | None = None, seed: int = 0) -> nn.Module:
    """Train ``model`` in place on all rows of ``x`` (+ ``mask`` for bags); returns it in eval mode."""
    require(loss in LOSSES, f"unknown loss '{loss}'; choose one of {list(LOSSES)}")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(x)
    batch = n if loss == "cox" else min(config.batch_size, n)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1 if n >= batch else 1, batch):
            rows = order[start : start + batch]
            out = model(x[rows], None if mask is None else mask[rows])
            value = _loss(loss, out, target, rows, config)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            optimiser.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    outs = [model(x[i : i + batch_size], None if mask is None else mask[i : i + batch_size])
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs)
