"""Slide aggregators over bags of patch features: gated attention-MIL (Ilse et al. 2018) and TransMIL
(Shao et al. 2021). Bags are padded to (B, N, D) with a mask (True = real patch), so bags of
different sizes share a batch; padding never changes the result.

``forward(x, mask) -> (B, out_dim)`` slide embedding; ``token_features(x, mask) -> (B, N, hidden)``
the aggregator's context-aware per-patch features (the targets of mSTAR's stage-2 distillation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import require


def _check_bag(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    require(x.ndim == 3, f"a bag batch must be (B, N, D); got {tuple(x.shape)}")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    require(mask.shape == x.shape[:2], f"bag mask {tuple(mask.shape)} does not match bag {tuple(x.shape[:2])}")
    require(bool(mask.any(1).all()), "every bag needs at least one real patch (a mask row is all False)")
    return mask.bool()


class GatedABMIL(nn.Module):
    """a_i = softmax_i( w^T (tanh(V h_i) * sigmoid(U h_i)) ),  slide = W_out Σ a_i h_i,  h_i = ReLU(W x_i)."""

    def __init__(self, in_dim: int, hidden: int = 128, attention_dim: int = 64, out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.out = nn.Linear(hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def token_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_bag(x, mask)
        return self.fc(x)

    def attention(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))).squeeze(-1)
        return scores.masked_fill(~mask, float("-inf")).softmax(dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        mask = _check_bag(x, mask)
        h = self.fc(x)
        a = self.attention(h, mask)
        slide = self.out(torch.einsum("bn,bnd->bd", a, h))
        return (slide, a) if return_attention else slide


class PPEG(nn.Module):
    """TransMIL's pyramid position encoding: depthwise 7/5/3 convolutions over patches laid on a square."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in (7, 5, 3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Each bag is laid on its own square from its real patches only, so padding never leaks in.
        out = torch.zeros_like(tokens)
        for i in range(tokens.shape[0]):
            real = tokens[i][mask[i]]
            n, d = real.shape
            side = math.ceil(math.sqrt(n))
            grid = F.pad(real, (0, 0, 0, side * side - n)).T.reshape(1, d, side, side)
            grid = grid + sum(conv(grid) for conv in self.convs)
            out[i, mask[i]] = grid.reshape(d, side * side).T[:n]
        return out


class TransMIL(nn.Module):
    """[CLS] + patch tokens -> transformer layer -> PPEG -> transformer layer -> LayerNorm(CLS)."""

    def __init__(self, in_dim: int, hidden: int = 128, heads: int = 4, out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)

        def layer():
            return nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True)

        self.layer1, self.layer2 = layer(), layer()
        self.ppeg = PPEG(hidden)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_dim or hidden)
        self.out_dim = out_dim or hidden

    def _run(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
        full = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        h = self.layer1(h, src_key_padding_mask=~full)
        h = torch.cat([h[:, :1], self.ppeg(h[:, 1:], mask)], dim=1)
        h = self.layer2(h, src_key_padding_mask=~full)
        return self.norm(h)

    def token_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check_bag(x, mask)
        return self._run(x, mask)[:, 1:]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _check_bag(x, mask)
        return self.out(self._run(x, mask)[:, 0])


AGGREGATORS = {"abmil": GatedABMIL, "transmil": TransMIL}


def build_aggregator(name: str, in_dim: int, hidden: int = 128, out_dim: int | None = None) -> nn.Module:
    require(name in AGGREGATORS, f"unknown aggregator '{name}'; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name](in_dim, hidden=hidden, out_dim=out_dim)
