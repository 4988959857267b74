"""Helpers for tests and demos: a freshly initialised MuPD ignores its conditions (zero-initialised
gates), so tests that need conditions to matter first give the zero-initialised layers values."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def perturb_zero_init_(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Fill every all-zero floating parameter (adaLN gates, output heads, extra-channel weights,
    biases) with N(0, std^2) values from a seeded generator, in place; returns the model."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.is_floating_point() and param.device.type != "meta" and not bool(param.any()):
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32).to(param) * std)
    return model
