"""Pathway scores: expression compressed onto gene sets (MuPD's 331 SurvPath pathways).

Score of pathway p for a sample = mean z-score of the member genes present in the input (genes
first mapped through a ``GeneVocabulary``). Coverage (members present / members) is reported per
pathway; a pathway with no covered gene scores 0 (= the training mean) and is counted.

Gene-set files: SurvPath's ``combine_signatures.csv`` (one column per pathway listing member
genes, blank-padded) or a standard GMT file (``name<TAB>description<TAB>gene...`` per line).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require

log = logging.getLogger("mupd.data")
FORMAT = "mupd-pathways"


@dataclass
class PathwayCoverage:
    names: list[str]
    members: list[int]  # genes per pathway
    covered: list[int]  # of which present in the input
    empty: list[str] = field(default_factory=list)  # pathways with no covered gene (scored 0)

    @property
    def mean_coverage(self) -> float:
        return float(np.mean([c / m for c, m in zip(self.covered, self.members)])) if self.members else 0.0

    def to_dict(self) -> dict:
        return {"n_pathways": len(self.names), "mean_coverage": self.mean_coverage,
                "n_empty": len(self.empty), "empty": self.empty[:20]}

    def __str__(self) -> str:
        return (f"{len(self.names)} pathways, mean gene coverage {self.mean_coverage:.1%}, "
                f"{len(self.empty)} with no covered gene (scored 0){', first ' + str(self.empty[:3]) if self.empty else ''}")


class PathwayScorer:
    def __init__(self, pathways: dict[str, list[str]], source: str = ""):
        require(len(pathways) > 0, "a pathway scorer needs at least one gene set")
        self.pathways = {str(k): _unique([str(g) for g in v]) for k, v in pathways.items()}
        empty = [k for k, v in self.pathways.items() if not v]
        require(not empty, f"gene sets with no genes: {empty[:5]}")
        self.names = list(self.pathways)
        self.source = source

    def __len__(self) -> int:
        return len(self.names)

    @property
    def genes(self) -> list[str]:
        """Every member gene, in first-seen order (a natural vocabulary for pathway models)."""
        return _unique([g for v in self.pathways.values() for g in v])

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "PathwayScorer":
        import pandas as pd

        path = Path(path)
        require(path.exists(), f"gene-set file {path} does not exist")
        try:
            table = pd.read_csv(path, dtype=str)
        except Exception as exc:
            raise MupdError(f"gene-set file {path} could not be read as CSV ({exc})") from None
        table = table.loc[:, [c for c in table.columns if not str(c).startswith("Unnamed")]]
        pathways = {c: [g.strip() for g in table[c].dropna() if g.strip()] for c in table.columns}
        pathways = {k: v for k, v in pathways.items() if v}
        return cls(pathways, source=path.name)

    @classmethod
    def from_gmt(cls, path: str | os.PathLike) -> "PathwayScorer":
        path = Path(path)
        require(path.exists(), f"gene-set file {path} does not exist")
        pathways = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            require(len(parts) >= 3, f"{path}:{n} is not a GMT line (name, description, genes separated by tabs)")
            require(parts[0] not in pathways, f"{path}:{n}: gene set '{parts[0]}' appears twice")
            pathways[parts[0]] = [g for g in parts[2:] if g]
        return cls(pathways, source=path.name)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PathwayScorer":
        from ..checkpoint import read_json

        data = read_json(path)
        require(data.get("format") == FORMAT, f"{path} is not a mupd pathway file (format != {FORMAT!r})")
        return cls(data["pathways"], data.get("source", ""))

    def save(self, path: str | os.PathLike) -> Path:
        from ..checkpoint import write_json

        write_json(path, {"format": FORMAT, "source": self.source, "names": self.names, "pathways": self.pathways})
        return Path(path)

    def score(self, zscored, genes: Sequence[str], *, return_coverage: bool = False):
        """(N, G) z-scored values with their gene names -> (N, n_pathways) float32 scores."""
        z = np.asarray(zscored, dtype=np.float64)
        if z.ndim == 1:
            z = z[None]
        genes = [str(g) for g in genes]
        require(z.shape[1] == len(genes), f"scores input has {z.shape[1]} columns but {len(genes)} gene names")
        require(bool(np.isfinite(z).all()), "pathway scoring input contains NaN/inf; transform through a GeneVocabulary first")
        index = {g: k for k, g in enumerate(genes)}
        out = np.zeros((z.shape[0], len(self.names)), np.float64)
        covered, members, empty = [], [], []
        for p, name in enumerate(self.names):
            cols = [index[g] for g in self.pathways[name] if g in index]
            members.append(len(self.pathways[name]))
            covered.append(len(cols))
            if cols:
                out[:, p] = z[:, cols].mean(axis=1)
            else:
                empty.append(name)
        coverage = PathwayCoverage(list(self.names), members, covered, empty)
        if empty:
            log.warning("pathway scores: %s", coverage)
        out = out.astype(np.float32)
        return (out, coverage) if return_coverage else out


def _unique(items):
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
