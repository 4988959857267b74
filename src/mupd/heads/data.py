"""Inputs for the heads: a TCGA-style cohort table (one row per patient with survival, label and
expression) and the feature sets built from it.

Survival follows the PORPOISE/SurvPath tables: ``survival_months`` and ``censorship`` (1 = censored,
i.e. alive at last follow-up; the event indicator is ``1 - censorship``). Rows are merged to one per
patient (``case_id``, first row kept) so a patient never counts twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MupdError, require

FEATURE_SETS = ("clinical", "genes", "pathways")
SURVIVAL_COLUMNS = ("survival_months", "censorship")


@dataclass
class Cohort:
    name: str
    case_ids: np.ndarray  # (N,) str, one per patient
    time: np.ndarray  # (N,) float months
    event: np.ndarray  # (N,) bool, True = death observed
    expression: np.ndarray | None  # (N, G) float32 z-scored, None when the table has no RNA
    genes: list[str]
    clinical: "object"  # pandas DataFrame, one row per patient (same order)

    def __len__(self) -> int:
        return len(self.case_ids)

    def labels(self, column: str, min_count: int = 10) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Integer labels from a clinical column; classes with fewer than ``min_count`` patients are
        dropped. Returns (labels, class names, kept-row mask)."""
        require(column in self.clinical.columns, f"cohort {self.name} has no column '{column}'; "
                f"choose one of {[c for c in self.clinical.columns if c != 'case_id']}")
        column_values = self.clinical[column]
        # A missing label is not a class: those patients are left out (kept-row mask False).
        values = np.where(column_values.notna(), column_values.astype(str), "").astype(str)
        names, counts = np.unique(values[values != ""], return_counts=True)
        classes = [str(n) for n, c in zip(names, counts) if c >= min_count]
        require(len(classes) >= 2, f"cohort {self.name}: column '{column}' has fewer than 2 classes with "
                f">= {min_count} patients ({dict(zip(names.tolist(), counts.tolist()))}); pick another label")
        keep = np.isin(values, classes) & (values != "")
        return np.searchsorted(classes, values[keep]), classes, keep


def resolve_cohort(cohort: str | os.PathLike) -> Path:
    """A table path, or a TCGA cohort name (``blca``) looked up in the sample data's ``tcga/``."""
    path = Path(cohort)
    if path.suffix in (".csv", ".gz") or path.is_file():  # a folder named like a cohort (e.g. an --out) is not a table
        require(path.exists(), f"cohort table {path} does not exist")
        return path
    from ..settings import sample_data_dir

    root = sample_data_dir()
    require(root is not None, f"'{cohort}' is not a file and no sample data folder was found "
            "(set MUPD_SAMPLE_DATA or pass the path of a tcga_<cohort>_all_clean.csv.gz table)")
    path = root / "tcga" / f"tcga_{str(cohort).lower()}_all_clean.csv.gz"
    if not path.exists():
        names = sorted(p.name[5:-len("_all_clean.csv.gz")] for p in (root / "tcga").glob("tcga_*_all_clean.csv.gz"))
        raise MupdError(f"no table for cohort '{cohort}' in {root / 'tcga'}; choose one of {names} or pass a path")
    return path


def load_cohort(cohort: str | os.PathLike, *, need_rna: bool = True) -> Cohort:
    """Read a cohort table, one row per patient, with validated survival columns."""
    import pandas as pd

    from ..data.tables import load_bulk_table

    path = resolve_cohort(cohort)
    if need_rna:
        table = load_bulk_table(path, key="case_id")
        clinical, expression, genes = table.clinical.reset_index(drop=True), table.values, table.genes
    else:
        try:
            clinical = pd.read_csv(path, low_memory=False, usecols=lambda c: not str(c).endswith(("_rnaseq", "_cnv", "_mut")))
        except Exception as exc:
            raise MupdError(f"cohort table {path} could not be read ({type(exc).__name__}: {exc})") from None
        require("case_id" in clinical.columns, f"{path} has no 'case_id' column; the heads split by patient")
        clinical = clinical.drop_duplicates("case_id").reset_index(drop=True)
        expression, genes = None, []
    missing = [c for c in SURVIVAL_COLUMNS if c not in clinical.columns]
    require(not missing, f"{path} has no {missing} column(s); survival heads need 'survival_months' and "
            "'censorship' (1 = censored) per row")
    time, event = check_survival(clinical["survival_months"].to_numpy(), clinical["censorship"].to_numpy(), str(path))
    name = path.name.replace("_all_clean.csv.gz", "").replace("tcga_", "").replace(".csv.gz", "").replace(".csv", "")
    return Cohort(name, clinical["case_id"].astype(str).to_numpy(), time, event, expression, genes, clinical)


def check_survival(time, censorship, where: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """Validated (time float64, event bool) from survival times and censorship flags (1 = censored)."""
    time = np.asarray(time, dtype=np.float64)
    censorship = np.asarray(censorship, dtype=np.float64)
    require(time.shape == censorship.shape and time.ndim == 1, f"{where}: survival times {time.shape} and "
            f"censorship {censorship.shape} must be 1-D of the same length")
    require(bool(np.isfinite(time).all()), f"{where}: {int((~np.isfinite(time)).sum())} survival times are missing/NaN; "
            "drop those patients")
    require(bool((time >= 0).all()), f"{where}: {int((time < 0).sum())} negative survival times (first "
            f"{time[time < 0][:3].tolist()}); times must be >= 0 months")
    require(bool(np.isin(censorship, (0, 1)).all()), f"{where}: censorship must be 0 (event) or 1 (censored); "
            f"found {sorted(set(np.unique(censorship).tolist()) - {0.0, 1.0})[:5]}")
    event = censorship == 0
    require(bool(event.any()), f"{where}: every patient is censored (no event); survival cannot be fitted")
    return time, event


def clinical_features(cohort: Cohort) -> tuple[np.ndarray, list[str]]:
    """Age and sex (the covariates every TCGA table carries), as float columns (standardised per fold)."""
    cols = [c for c in ("age", "is_female") if c in cohort.clinical.columns]
    require(bool(cols), f"cohort {cohort.name} has neither 'age' nor 'is_female'; no clinical covariates")
    x = cohort.clinical[cols].to_numpy(np.float64)
    # A missing age becomes the cohort median: one or two NaNs would otherwise drop a patient.
    x = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    return x.astype(np.float32), cols


def pathway_features(cohort: Cohort, genesets: str | os.PathLike | None = None) -> tuple[np.ndarray, list[str]]:
    """SurvPath pathway scores (mean z-score of the member genes present), via ``PathwayScorer``."""
    from ..data.pathways import PathwayScorer

    require(cohort.expression is not None, f"cohort {cohort.name} has no RNA columns")
    scorer = PathwayScorer.from_csv(genesets or default_genesets())
    scores = scorer.score(cohort.expression, cohort.genes)
    # Pathways with no gene in this table are constant 0: drop them instead of feeding dead columns.
    alive = np.abs(scores).sum(0) > 0
    return scores[:, alive], [n for n, a in zip(scorer.names, alive) if a]


def default_genesets() -> Path:
    from ..settings import sample_data_dir

    root = sample_data_dir()
    require(root is not None, "no gene-set file given and no sample data folder found; pass --genesets "
            "(SurvPath's combine_signatures.csv or a GMT file)")
    return root / "genesets" / "combine_signatures.csv"


def check_feature_kind(kind: str) -> list[str]:
    """``genes``, ``pathways``, ``clinical`` or a ``+``-joined fusion such as ``genes+clinical``."""
    parts = [p.strip() for p in str(kind).split("+")]
    bad = [p for p in parts if p not in FEATURE_SETS]
    require(not bad and len(set(parts)) == len(parts), f"unknown or repeated feature set in '{kind}'; use one of "
            f"{list(FEATURE_SETS)} or several joined by '+' (e.g. genes+clinical)")
    return parts


def feature_matrix(cohort: Cohort, kind: str, genesets=None) -> tuple[np.ndarray, list[str]]:
    """The named inputs as one (N, F) float32 matrix; a fusion ``a+b`` concatenates the columns."""
    parts = check_feature_kind(kind)
    if len(parts) > 1:
        blocks = [feature_matrix(cohort, p, genesets) for p in parts]
        return np.concatenate([b[0] for b in blocks], axis=1).astype(np.float32), [n for b in blocks for n in b[1]]
    if kind == "clinical":
        return clinical_features(cohort)
    require(cohort.expression is not None, f"cohort {cohort.name} has no RNA; use --features clinical")
    if kind == "genes":
        return cohort.expression, list(cohort.genes)
    return pathway_features(cohort, genesets)


def pad_bags(bags: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bags of (n_i, D) patch features -> (B, N_max, D) zero-padded array and (B, N_max) mask."""
    require(len(bags) > 0, "no bags given")
    widths = {np.asarray(b).shape[-1] for b in bags}
    require(all(np.asarray(b).ndim == 2 for b in bags), "every bag must be a 2-D (patches, features) array")
    require(len(widths) == 1, f"bags have different feature widths {sorted(widths)}; encode every bag "
            "with the same encoder")
    require(all(len(b) > 0 for b in bags), "a bag has no patches; drop empty bags")
    n = max(len(b) for b in bags)
    d = widths.pop()
    x = np.zeros((len(bags), n, d), np.float32)
    mask = np.zeros((len(bags), n), bool)
    for i, b in enumerate(bags):
        x[i, : len(b)], mask[i, : len(b)] = b, True
    return x, mask
