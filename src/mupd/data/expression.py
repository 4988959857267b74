"""A versioned gene vocabulary: the fixed gene order, the normalisation and the per-gene z-score
that turn expression into model input — saved (JSON) with every model and applied identically at
training and at inference.

Normalisations (applied to each sample over *all* genes it carries, before selecting the
vocabulary, so library size does not depend on the vocabulary):

- ``log1p_cpm``: raw counts -> counts per million -> ``log1p`` (spatial / single-cell UMIs);
- ``log_tpm``: TPM (already length-normalised) -> ``log2(1 + TPM)`` (bulk RNA-seq);
- ``none``: values already normalised (e.g. TCGA z-scores); negatives allowed.

Missing genes (in the vocabulary, absent from a sample's columns) are filled with the training
mean, i.e. 0 after z-scoring, and reported (how many, which). Unknown genes are ignored and
counted. NaN values, and negative values where counts are expected, raise ``MupdError`` naming
the sample and the gene.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require

log = logging.getLogger("mupd.data")

NORMALISATIONS = ("log1p_cpm", "log_tpm", "none")
FORMAT = "mupd-gene-vocabulary"
FORMAT_VERSION = 1
FILL_RULE = "training mean (0 after z-scoring)"


@dataclass
class MissingReport:
    """What ``transform`` had to fill or ignore, so nothing happens silently."""

    n_vocabulary: int
    missing: list[str] = field(default_factory=list)  # vocabulary genes absent from the input
    unknown_count: int = 0  # input genes not in the vocabulary (ignored)
    unknown_examples: list[str] = field(default_factory=list)
    fill: str = FILL_RULE

    @property
    def coverage(self) -> float:
        return 1.0 - len(self.missing) / max(self.n_vocabulary, 1)

    def __str__(self) -> str:
        return (f"{len(self.missing)}/{self.n_vocabulary} vocabulary genes missing (filled with {self.fill})"
                f"{', first ' + str(self.missing[:5]) if self.missing else ''}; "
                f"{self.unknown_count} unknown genes ignored"
                f"{', first ' + str(self.unknown_examples) if self.unknown_count else ''}")

    def to_dict(self) -> dict:
        return {"n_vocabulary": self.n_vocabulary, "n_missing": len(self.missing), "missing": self.missing,
                "unknown_count": self.unknown_count, "unknown_examples": self.unknown_examples, "fill": self.fill}


def normalise(values: np.ndarray, normalisation: str, *, genes: Sequence[str] | None = None,
              sample_ids: Sequence[str] | None = None) -> np.ndarray:
    """Validate and normalise a (N, G) matrix sample by sample (see the module docstring)."""
    require(normalisation in NORMALISATIONS, f"unknown normalisation '{normalisation}'; use one of {NORMALISATIONS}")
    values = np.asarray(values, dtype=np.float64)
    require(values.ndim == 2, f"expression must be a (samples, genes) matrix, got shape {values.shape}")
    _check_finite(values, genes, sample_ids, allow_negative=normalisation == "none")
    if normalisation == "log1p_cpm":
        totals = values.sum(axis=1, keepdims=True)
        empty = np.where(totals[:, 0] == 0)[0]
        if len(empty):
            raise MupdError(f"{len(empty)} samples have zero total counts, first {_names(sample_ids, empty[:3])}; "
                            "drop empty spots before normalising")
        return np.log1p(values / totals * 1e6)
    if normalisation == "log_tpm":
        return np.log2(1.0 + values)
    return values


def _check_finite(values, genes, sample_ids, allow_negative: bool) -> None:
    bad = ~np.isfinite(values)
    if not allow_negative:
        bad |= values < 0
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        what = "NaN/inf" if not np.isfinite(values[i, j]) else f"negative ({values[i, j]:g})"
        gene = genes[j] if genes is not None else f"column {j}"
        raise MupdError(f"expression of sample {_names(sample_ids, [i])[0]!r}, gene {gene!r} is {what} "
                        f"({int(bad.sum())} bad values in all); raw counts must be finite and >= 0 — fix the "
                        "table or choose normalisation='none' for already normalised values")


def _names(ids, idx) -> list[str]:
    return [str(ids[k]) if ids is not None else f"row {k}" for k in idx]


class GeneVocabulary:
    """Ordered genes + normalisation + per-gene mean/std. Build with ``fit``; ``transform`` maps any
    sample (with its own gene names) onto the vocabulary."""

    def __init__(self, genes: Sequence[str], normalisation: str = "log1p_cpm", mean=None, std=None,
                 zscore: bool = True, meta: dict | None = None):
        genes = [str(g) for g in genes]
        require(len(genes) > 0, "a gene vocabulary needs at least one gene")
        dups = _duplicates(genes)
        require(not dups, f"gene vocabulary lists {len(dups)} genes twice, first {dups[:5]}")
        require(normalisation in NORMALISATIONS, f"unknown normalisation '{normalisation}'; use one of {NORMALISATIONS}")
        self.genes = genes
        self.normalisation = normalisation
        self.zscore = bool(zscore)
        self.mean = np.zeros(len(genes), np.float64) if mean is None else np.asarray(mean, np.float64)
        self.std = np.ones(len(genes), np.float64) if std is None else np.asarray(std, np.float64)
        require(self.mean.shape == (len(genes),) and self.std.shape == (len(genes),),
                f"mean/std must have one value per gene ({len(genes)})")
        self.meta = dict(meta or {})
        self._index = {g: k for k, g in enumerate(genes)}

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def version(self) -> str:
        """A content hash: two vocabularies with the same version transform identically."""
        payload = json.dumps([self.genes, self.normalisation, self.zscore,
                              np.round(self.mean, 8).tolist(), np.round(self.std, 8).tolist()])
        return f"gv{FORMAT_VERSION}-" + hashlib.sha256(payload.encode()).hexdigest()[:12]

    @classmethod
    def fit(cls, counts, genes: Sequence[str], normalisation: str = "log1p_cpm", zscore: bool = True,
            top_k: int | None = None, sample_ids: Sequence[str] | None = None) -> "GeneVocabulary":
        """Fit on a (N, G) matrix. ``top_k`` keeps the most variable genes after normalisation
        (ties broken by gene order), else every gene in the given order."""
        genes = [str(g) for g in genes]
        counts = np.asarray(counts)
        require(counts.ndim == 2 and counts.shape[1] == len(genes),
                f"counts shape {counts.shape} does not match {len(genes)} gene names")
        require(counts.shape[0] >= 2 or not zscore, "z-scoring needs at least 2 samples to fit")
        dups = _duplicates(genes)
        require(not dups, f"gene names repeat ({len(dups)}, first {dups[:5]}); make them unique first")
        x = normalise(counts, normalisation, genes=genes, sample_ids=sample_ids)
        keep = np.arange(len(genes))
        if top_k is not None and top_k < len(genes):
            var = x.var(axis=0)
            keep = np.sort(np.argsort(-var, kind="stable")[:top_k])
        x = x[:, keep]
        mean = x.mean(axis=0) if zscore else np.zeros(len(keep))
        std = x.std(axis=0) if zscore else np.ones(len(keep))
        std = np.where(std < 1e-6, 1.0, std)  # constant genes: centred, not blown up
        return cls([genes[k] for k in keep], normalisation, mean, std, zscore,
                   meta={"n_fit_samples": int(counts.shape[0]), "top_k": top_k})

    def transform(self, values, genes: Sequence[str], sample_ids: Sequence[str] | None = None,
                  *, normalised: str | None = None) -> tuple[np.ndarray, MissingReport]:
        """(N, G_in) values with their own gene names -> ((N, len(vocab)) float32, MissingReport).

        ``normalised`` names the normalisation the values already carry (e.g. ``mupd impute``'s
        log1p-CPM predictions); it must be the vocabulary's own, and is then not applied twice."""
        values = np.asarray(values)
        if values.ndim == 1:
            values = values[None]
        genes = [str(g) for g in genes]
        require(values.shape[1] == len(genes), f"values have {values.shape[1]} columns but {len(genes)} gene names")
        dups = _duplicates(genes)
        require(not dups, f"input gene names repeat ({len(dups)}, first {dups[:5]}); make them unique first")
        if normalised is None:
            x = normalise(values, self.normalisation, genes=genes, sample_ids=sample_ids)
        else:
            require(normalised == self.normalisation,
                    f"the expression values are already {normalised} but this vocabulary expects "
                    f"{self.normalisation}; give raw counts or values normalised as {self.normalisation}")
            x = np.asarray(values, dtype=np.float64)
            _check_finite(x, genes, sample_ids, allow_negative=True)
        out = np.zeros((x.shape[0], len(self.genes)), np.float64)
        if not self.zscore:
            out[:] = self.mean  # fill rule: the training mean
        src = [k for k, g in enumerate(genes) if g in self._index]
        dst = [self._index[genes[k]] for k in src]
        z = x[:, src]
        if self.zscore:
            z = (z - self.mean[dst]) / self.std[dst]
        out[:, dst] = z
        present = set(dst)
        missing = [g for k, g in enumerate(self.genes) if k not in present]
        unknown = [g for g in genes if g not in self._index]
        report = MissingReport(len(self.genes), missing, len(unknown), unknown[:5])
        if missing:
            log.warning("gene vocabulary %s: %s", self.version, report)
        return out.astype(np.float32), report

    def inverse_zscore(self, z: np.ndarray) -> np.ndarray:
        """Back from model space to the normalised scale (e.g. log1p CPM)."""
        return np.asarray(z) * self.std + self.mean if self.zscore else np.asarray(z)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version,
                "normalisation": self.normalisation, "zscore": self.zscore, "genes": self.genes,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "fill_missing": FILL_RULE, "meta": self.meta}

    def save(self, path: str | os.PathLike) -> Path:
        from ..checkpoint import write_json

        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict, where: str = "gene vocabulary") -> "GeneVocabulary":
        require(isinstance(data, dict) and data.get("format") == FORMAT,
                f"{where} is not a mupd gene vocabulary (format != {FORMAT!r})")
        try:
            vocab = cls(data["genes"], data["normalisation"], data["mean"], data["std"], data.get("zscore", True), data.get("meta"))
        except KeyError as exc:
            raise MupdError(f"{where} lacks the field {exc}; re-save it with GeneVocabulary.save") from None
        if data.get("version") and data["version"] != vocab.version:
            raise MupdError(f"{where}: stored version {data['version']} does not match its content "
                            f"({vocab.version}); the file was edited or damaged")
        return vocab

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GeneVocabulary":
        from ..checkpoint import read_json

        return cls.from_dict(read_json(path), where=str(path))

    def __repr__(self) -> str:
        return f"GeneVocabulary({len(self)} genes, {self.normalisation}, zscore={self.zscore}, {self.version})"


def _duplicates(items: Sequence[str]) -> list[str]:
    seen, dups = set(), []
    for g in items:
        if g in seen:
            dups.append(g)
        seen.add(g)
    return dups
