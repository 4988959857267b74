"""Named evaluation protocols: which sections train and test each fold, which genes, which
normalisation, which metrics — resolved in full into every result JSON.

* ``her2st-loso``: leave one *section* out, over the her2st sections that have an H&E image.
* ``her2st-lopo``: leave one *patient* out (her2st section names start with the patient letter:
  B4 is patient B, C2-C5 are patient C), so no patient is on both sides.

Gene set: the top-k genes by mean or by variance of log1p-CPM over the *training* spots of each
fold only (the test fold never influences which genes are scored). Normalisation: log1p-CPM per
spot over all of its genes. Metrics per gene and per fold (``evaluate``); summaries are mean ± std
over folds, never pooled across folds.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.expression import normalise
from ..errors import MupdError, require

GENE_RULES = ("variance", "mean")


def her2st_patient(section: str) -> str:
    """her2st names sections <patient letter><replicate>, e.g. C3 -> patient C."""
    return str(section)[0]


@dataclass(frozen=True)
class Protocol:
    name: str
    dataset: str
    unit: str  # "section" | "patient": what one fold holds out
    sections: tuple  # the sections the protocol needs (all must have counts and an image)
    n_genes: int = 250
    gene_rule: str = "variance"
    normalisation: str = "log1p_cpm"
    crop_px: int = 224  # spot crop in full-resolution pixels (~175 um at 0.78 um/px)
    metrics: tuple = ("pearson", "spearman", "mse", "fraction_r_positive")
    summary: str = "mean and std over folds of per-fold means over genes; never pooled across folds"

    def group_of(self, section: str) -> str:
        return her2st_patient(section) if self.unit == "patient" else str(section)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["sections"] = list(self.sections)
        out["metrics"] = list(self.metrics)
        out["gene_selection"] = f"top {self.n_genes} by {self.gene_rule} of {self.normalisation} on the training folds only"
        out["undefined_correlation"] = "a gene whose prediction or truth is constant in a fold gets r = 0 (counted in n_undefined)"
        return out


HER2ST_SECTIONS = ("B4", "C2", "C3", "C4", "C5")
PROTOCOLS = {
    "her2st-loso": Protocol("her2st-loso", "her2st", "section", HER2ST_SECTIONS),
    "her2st-lopo": Protocol("her2st-lopo", "her2st", "patient", HER2ST_SECTIONS),
}


def get(name: str, **overrides) -> Protocol:
    require(name in PROTOCOLS, f"unknown imputation protocol '{name}'; known: {', '.join(sorted(PROTOCOLS))}")
    protocol = dataclasses.replace(PROTOCOLS[name], **overrides)
    require(protocol.gene_rule in GENE_RULES, f"protocol {name}: gene rule must be one of {GENE_RULES}, not {protocol.gene_rule!r}")
    require(protocol.n_genes >= 1, f"protocol {name}: n_genes must be >= 1, got {protocol.n_genes}")
    return protocol


def check_data(protocol: Protocol, root: str | os.PathLike) -> None:
    """Refuse a protocol whose sections are not all present with counts *and* an image."""
    from ..data.spatial import her2st_sections

    root = Path(root)
    require((root / "ST-cnts").is_dir(), f"protocol {protocol.name} needs the her2st folder; {root} has no ST-cnts/ "
                                         "(set MUPD_SAMPLE_DATA or pass --data)")
    have = set(her2st_sections(root))
    absent = [s for s in protocol.sections if s not in have]
    if absent:
        raise MupdError(f"protocol {protocol.name} needs sections {list(protocol.sections)} with counts and an H&E image; "
                        f"{root} lacks {absent} (has {sorted(have)}); a different set of sections would be a different "
                        "protocol, so it is refused rather than run on what is there")


@dataclass
class Fold:
    name: str
    train: np.ndarray  # spot indices
    test: np.ndarray
    train_groups: list
    test_groups: list


def make_folds(protocol: Protocol, spot_sections: Sequence[str]) -> list[Fold]:
    """One fold per held-out section / patient; train and test are asserted disjoint by group."""
    sections = np.asarray([str(s) for s in spot_sections])
    groups = np.asarray([protocol.group_of(s) for s in sections])
    folds = []
    for held in sorted(set(groups)):
        test, train = np.where(groups == held)[0], np.where(groups != held)[0]
        require(len(train) > 0 and len(test) > 0, f"protocol {protocol.name}: fold {held} has an empty side")
        fold = Fold(f"{protocol.unit}={held}", train, test, sorted(set(groups[train].tolist())), sorted(set(groups[test].tolist())))
        assert_disjoint(fold, sections, protocol)
        folds.append(fold)
    require(len(folds) >= 2, f"protocol {protocol.name}: only {len(folds)} {protocol.unit}(s) in the data; need >= 2 folds")
    return folds


def assert_disjoint(fold: Fold, sections: np.ndarray, protocol: Protocol) -> None:
    """No spot, section or (for lopo) patient on both sides of a fold."""
    if set(fold.train.tolist()) & set(fold.test.tolist()):
        raise MupdError(f"{protocol.name} {fold.name}: a spot is in train and test")
    train_sec, test_sec = set(sections[fold.train].tolist()), set(sections[fold.test].tolist())
    if train_sec & test_sec:
        raise MupdError(f"{protocol.name} {fold.name}: sections {sorted(train_sec & test_sec)} on both sides")
    train_pat, test_pat = {her2st_patient(s) for s in train_sec}, {her2st_patient(s) for s in test_sec}
    if protocol.unit == "patient" and train_pat & test_pat:
        raise MupdError(f"{protocol.name} {fold.name}: patients {sorted(train_pat & test_pat)} on both sides")


def select_genes(train_counts: np.ndarray, genes: Sequence[str], n_genes: int, rule: str = "variance",
                 normalisation: str = "log1p_cpm") -> list[str]:
    """Top ``n_genes`` by ``rule`` of the normalised *training* values (ties: gene order)."""
    require(rule in GENE_RULES, f"gene rule must be one of {GENE_RULES}, not {rule!r}")
    x = normalise(train_counts, normalisation, genes=genes)
    score = x.var(axis=0) if rule == "variance" else x.mean(axis=0)
    keep = np.sort(np.argsort(-score, kind="stable")[: min(n_genes, len(genes))])
    return [str(genes[k]) for k in keep]


def normalised_panel(counts: np.ndarray, genes: Sequence[str], panel: Sequence[str], normalisation: str = "log1p_cpm",
                     sample_ids: Sequence[str] | None = None) -> np.ndarray:
    """Normalise each spot over *all* its genes, then keep the panel columns (float64)."""
    index = {g: k for k, g in enumerate(genes)}
    unknown = [g for g in panel if g not in index]
    require(not unknown, f"{len(unknown)} panel genes are not in the expression table, first {unknown[:5]}; "
                         "use a panel drawn from the same gene symbols")
    x = normalise(counts, normalisation, genes=genes, sample_ids=sample_ids)
    return x[:, [index[g] for g in panel]]
