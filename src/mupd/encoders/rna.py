"""RNA encoders: expression already normalised by a ``GeneVocabulary`` -> condition tokens.

* ``pathway-tokens`` (mupd-notes §2.4 option b): z-scored genes -> pathway scores (mean z-score of
  the member genes present, as ``PathwayScorer.score``, done as one matrix product so it runs on the
  GPU) -> one token per pathway, ``token_i = score_i * e_i + b_i`` with learned ``e_i``, ``b_i``;
* ``gene-tokens``: the same per gene;
* ``expression-mlp``: one token from an MLP over all genes.

These have learned parameters (they start random, which is a usable fixed feature map, and can be
trained with the generator); ``save_pretrained(dir)`` writes config.json + model.safetensors and
``registry.build("rna", name, path=dir)`` reads them back. Because the weights are random, a model
trained with one of these is only meaningful with *that* encoder: the pipeline folder stores it
(``mupd.bundle``), never the name alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_folder, load_into, read_json, write_json
from ..errors import MupdError, require
from .base import ConditionEncoder, check_expression, register

FORMAT = "mupd-rna-encoder"


class ScaledEmbeddingTokens(nn.Module):
    """(B, F) values -> (B, F, D) tokens, ``token_i = value_i * e_i + b_i``."""

    def __init__(self, num_features: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, width))
        self.bias = nn.Parameter(torch.randn(num_features, width))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values.unsqueeze(-1) * self.weight + self.bias


def membership_matrix(pathways: dict[str, list[str]], genes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(P, G) row-normalised membership: ``x @ M.T`` = mean z-score of each pathway's present genes.
    Pathways with no gene in ``genes`` get a zero row (score 0 = the training mean)."""
    index = {g: k for k, g in enumerate(genes)}
    matrix = np.zeros((len(pathways), len(genes)), np.float32)
    empty = []
    for p, (name, members) in enumerate(pathways.items()):
        cols = [index[g] for g in members if g in index]
        if cols:
            matrix[p, cols] = 1.0 / len(cols)
        else:
            empty.append(name)
    return torch.from_numpy(matrix), empty


class RnaEncoder(ConditionEncoder):
    modality = "rna"

    def __init__(self, mode: str, genes: list[str], width: int = 64, pathways: dict[str, list[str]] | None = None,
                 hidden: int = 256):
        super().__init__()
        require(mode in ("pathway", "gene", "mlp"), f"rna encoder mode must be pathway, gene or mlp, not {mode!r}")
        require(bool(genes), "an RNA encoder needs the gene list of its GeneVocabulary (genes=vocabulary.genes)")
        require(isinstance(width, int) and width > 0, f"rna encoder width must be a positive int, got {width!r}")
        self.mode, self.genes, self.width, self.hidden = mode, list(genes), width, hidden
        self.pathways = dict(pathways) if pathways else None
        if mode == "pathway":
            require(self.pathways is not None, "rna encoder 'pathway-tokens' needs pathways= (a PathwayScorer, "
                    "a gene-set file such as genesets/combine_signatures.csv, or a dict name -> genes)")
            matrix, self.empty_pathways = membership_matrix(self.pathways, self.genes)
            require(len(self.empty_pathways) < len(self.pathways),
                    "none of the pathways shares a gene with the vocabulary; check gene symbols")
            self.register_buffer("membership", matrix, persistent=False)
            self.tokens = ScaledEmbeddingTokens(len(self.pathways), width)
        elif mode == "gene":
            self.tokens = ScaledEmbeddingTokens(len(self.genes), width)
        else:
            self.mlp = nn.Sequential(nn.Linear(len(self.genes), hidden), nn.SiLU(), nn.Linear(hidden, width))

    @property
    def num_genes(self) -> int:
        """Input width: expression values in the vocabulary's gene order."""
        return len(self.genes)

    @property
    def num_tokens(self) -> int:
        return {"pathway": len(self.pathways or ()), "gene": len(self.genes), "mlp": 1}[self.mode]

    def scores(self, expression: torch.Tensor) -> torch.Tensor:
        """(B, G) z-scored expression -> (B, P) pathway scores (pathway mode only)."""
        x = check_expression(expression, len(self.genes)).to(self.membership.device)
        return x @ self.membership.T

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = check_expression(batch, len(self.genes)).to(self.device)
        if self.mode == "pathway":
            tokens = self.tokens(x @ self.membership.T)
        elif self.mode == "gene":
            tokens = self.tokens(x)
        else:
            tokens = self.mlp(x).unsqueeze(1)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    # -- save / load ------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"format": FORMAT, "mode": self.mode, "genes": self.genes, "width": self.width,
                "hidden": self.hidden, "pathways": self.pathways}

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from ..checkpoint import save_tensors

        with atomic_folder(path) as tmp:
            write_json(tmp / "config.json", self.config())
            save_tensors(tmp / "model.safetensors", self.state_dict())
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "RnaEncoder":
        path = Path(path)
        if not path.is_dir():
            raise MupdError(f"RNA encoder folder {path} does not exist; save one with encoder.save_pretrained(folder)")
        config = read_json(path / "config.json")
        require(config.get("format") == FORMAT, f"{path / 'config.json'} is not an RNA encoder config (format != {FORMAT!r})")
        encoder = cls(config["mode"], config["genes"], config["width"], config.get("pathways"), config.get("hidden", 256))
        load_into(encoder, path / "model.safetensors")
        return encoder


def _pathway_dict(pathways) -> dict[str, list[str]] | None:
    if pathways is None or isinstance(pathways, dict):
        return pathways
    if hasattr(pathways, "pathways"):  # a PathwayScorer
        return dict(pathways.pathways)
    from ..data.pathways import PathwayScorer

    path = Path(pathways)
    if path.suffix == ".json":
        return PathwayScorer.load(path).pathways
    if path.suffix == ".gmt":
        return PathwayScorer.from_gmt(path).pathways
    return PathwayScorer.from_csv(path).pathways


def _genes(genes) -> list[str] | None:
    if genes is None:
        return None
    return list(genes.genes) if hasattr(genes, "genes") else [str(g) for g in genes]


def _factory(mode: str):
    def build(genes=None, width: int = 64, pathways=None, hidden: int = 256, path=None):
        if path is not None:
            encoder = RnaEncoder.from_pretrained(path)
            require(encoder.mode == mode, f"{path} holds a '{encoder.mode}' RNA encoder, not '{mode}'")
            return encoder
        return RnaEncoder(mode, _genes(genes), width, _pathway_dict(pathways), hidden)

    return build


register("rna", "pathway-tokens", licence="Apache-2.0 (mupd code)",
         base="built-in SurvPath gene sets: GPL-3.0 (your GMT file: its own)", commercial="check", source="built in: one learned token per pathway scaled by its score", width="configurable (default 64)")(
    _factory("pathway"))
register("rna", "gene-tokens", licence="Apache-2.0 (mupd code)", base="none (trained weights follow their data)", commercial="yes",
         source="built in: one learned token per gene scaled by its z-score", width="configurable (default 64)")(_factory("gene"))
register("rna", "expression-mlp", licence="Apache-2.0 (mupd code)", base="none (trained weights follow their data)", commercial="yes",
         source="built in: MLP over all genes -> one token", width="configurable (default 64)")(_factory("mlp"))
