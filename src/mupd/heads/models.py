"""Head architectures on frozen inputs. Each maps features to ``out_dim`` outputs (hazard logits per
time bin, one Cox log-risk, or class logits):

* ``linear``: dropout + linear layer (a penalised Cox / logistic model when trained with weight decay);
* ``mlp``: two hidden layers (the genomic SNN/MLP baselines of PORPOISE and SurvPath, ReLU form);
* ``pathway-tokens``: expression -> one token per SurvPath pathway (``mupd.encoders.rna``'s
  ``pathway-tokens`` encoder) -> gated attention pooling over pathways (``mupd.align.mil.GatedABMIL``);
  its attention says which pathways a prediction leans on;
* ``abmil`` / ``transmil``: bags of patch features through ``mupd.align.mil``'s aggregators.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import require

TABULAR_HEADS = ("linear", "mlp", "pathway-tokens")
BAG_HEADS = ("abmil", "transmil")
HEADS = TABULAR_HEADS + BAG_HEADS


class LinearHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, dropout: float = 0.25):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class PathwayTokenHead(nn.Module):
    """z-scored genes -> pathway tokens (score_i * e_i + b_i) -> attention pooling -> outputs."""

    def __init__(self, genes: list[str], pathways: dict[str, list[str]], out_dim: int, width: int = 16,
                 hidden: int = 32, dropout: float = 0.25):
        super().__init__()
        from ..align.mil import GatedABMIL
        from ..encoders.rna import RnaEncoder

        self.encoder = RnaEncoder("pathway", genes, width=width, pathways=pathways)
        # The encoder's token tables start N(0, 1); scaled down so attention starts near uniform.
        with torch.no_grad():
            self.encoder.tokens.weight.mul_(0.1)
            self.encoder.tokens.bias.mul_(0.1)
        self.pool = GatedABMIL(width, hidden=hidden, attention_dim=hidden, out_dim=out_dim, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False):
        tokens, token_mask = self.encoder.encode(x)
        return self.pool(tokens, token_mask, return_attention=return_attention)


class BagHead(nn.Module):
    """A ``mupd.align.mil`` aggregator whose output layer gives the head's outputs directly."""

    def __init__(self, aggregator: str, in_dim: int, out_dim: int, hidden: int = 64):
        super().__init__()
        from ..align.mil import build_aggregator

        self.aggregator_name = aggregator
        self.aggregator = build_aggregator(aggregator, in_dim, hidden=hidden, out_dim=out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.aggregator(x, mask)

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-tile attention (ABMIL only; TransMIL has no single attention vector) or None."""
        if self.aggregator_name != "abmil":
            return None
        with torch.no_grad():
            return self.aggregator(x, mask, return_attention=True)[1]


def build_head(name: str, in_dim: int, out_dim: int, *, hidden: int = 64, dropout: float = 0.25,
               genes: list[str] | None = None, pathways: dict | None = None) -> nn.Module:
    require(name in HEADS, f"unknown head '{name}'; choose one of {list(HEADS)}")
    if name == "linear":
        return LinearHead(in_dim, out_dim, dropout=0.0)
    if name == "mlp":
        return MLPHead(in_dim, out_dim, hidden=hidden, dropout=dropout)
    if name == "pathway-tokens":
        require(genes is not None and pathways is not None, "the pathway-tokens head needs gene names and pathways")
        return PathwayTokenHead(genes, pathways, out_dim, hidden=min(hidden, 32), dropout=dropout)
    return BagHead(name, in_dim, out_dim, hidden=hidden)
