"""Bulk expression tables keyed by slide or case (TCGA/PORPOISE CSVs) and their join to records.

A table has one row per slide (``slide_id``, the ``.svs`` name) with ``case_id``, clinical columns
and ``<GENE>_rnaseq`` columns (already normalised, roughly z-scored: use a ``GeneVocabulary``
with ``normalisation="none"``). ``join_expression`` attaches the row's vector to each record whose
``meta[key]`` (or id) matches; records without a row are reported, never silently dropped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require
from .records import Record

log = logging.getLogger("mupd.data")

CLINICAL_COLUMNS = ("case_id", "slide_id", "age", "site", "survival_months", "censorship", "is_female",
                    "oncotree_code", "train")


@dataclass
class BulkTable:
    ids: list[str]  # the key column (slide_id or case_id)
    key: str
    values: np.ndarray  # (N, G) float32
    genes: list[str]
    clinical: "object"  # pandas DataFrame indexed like ids
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, key: str) -> int | None:
        if not hasattr(self, "_index"):
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index.get(str(key))


def case_id_from_slide(slide_id: str) -> str:
    """TCGA barcode of a slide file (``TCGA-3C-AALI-01Z-00-DX1.<uuid>.svs``) -> case (``TCGA-3C-AALI``)."""
    return "-".join(Path(str(slide_id)).name.split("-")[:3])


def load_bulk_table(path: str | os.PathLike, *, key: str = "slide_id", suffix: str = "_rnaseq",
                    genes: Sequence[str] | None = None) -> BulkTable:
    """Read a TCGA-style CSV. ``key`` = ``slide_id`` (one row per slide; duplicates are an error) or
    ``case_id`` (rows of the same case are merged: the first is kept and the count reported)."""
    import pandas as pd

    path = Path(path)
    require(path.exists(), f"expression table {path} does not exist")
    try:
        table = pd.read_csv(path, low_memory=False)
    except Exception as exc:
        raise MupdError(f"expression table {path} could not be read ({type(exc).__name__}: {exc})") from None
    require(key in table.columns, f"{path} has no '{key}' column; use key='slide_id' or 'case_id'")
    cols = [c for c in table.columns if str(c).endswith(suffix)]
    require(bool(cols), f"{path} has no '<GENE>{suffix}' columns (this cohort has no RNA?); pick another table")
    gene_names = [c[: -len(suffix)] for c in cols]
    if genes is not None:
        wanted = set(genes)
        keep = [k for k, g in enumerate(gene_names) if g in wanted]
        cols, gene_names = [cols[k] for k in keep], [gene_names[k] for k in keep]
    table[key] = table[key].astype(str)
    report = {}
    dups = table[key][table[key].duplicated()].tolist()
    if dups:
        if key == "slide_id":
            raise MupdError(f"{path}: {len(dups)} duplicate slide_id rows, first {dups[:3]}; remove them")
        report["merged_duplicate_keys"] = {"count": len(dups), "first": dups[:5]}
        log.info("%s: %d rows share a %s with an earlier row; the first row of each is used", path.name, len(dups), key)
        table = table.drop_duplicates(key, keep="first")
    values = table[cols].to_numpy(np.float32)
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise MupdError(f"{path}: expression of {key} {table[key].iloc[i]!r}, gene {gene_names[j]!r} is NaN "
                        f"({int(bad.sum())} missing values in {int(bad.any(1).sum())} rows); impute or drop those rows")
    clinical = table[[c for c in table.columns if not str(c).endswith(("_rnaseq", "_cnv", "_mut")) and not str(c).startswith("Unnamed")]]
    return BulkTable(table[key].tolist(), key, values, gene_names, clinical.set_index(key, drop=False), report)


def join_expression(records: Sequence[Record], table: BulkTable, *, record_key: str | None = None,
                    require_all: bool = False, clinical: Sequence[str] = ()) -> dict:
    """Attach ``table`` rows to records by ``meta[record_key]`` (default ``meta[table.key]``; for
    ``case_id`` tables the case is derived from ``meta["slide_id"]`` or the id when absent).
    ``clinical`` columns are copied into ``meta``. Returns a report of matched/unmatched."""
    record_key = record_key or table.key
    unmatched = []
    for r in records:
        k = r.meta.get(record_key)
        if k is None and table.key == "case_id":
            k = case_id_from_slide(r.meta.get("slide_id", r.id))
        if k is None:
            k = r.meta.get("slide_id", r.id)
        i = table.row(str(k))
        if i is None and table.key == "slide_id":
            i = table.row(Path(str(k)).name)
        if i is None:
            unmatched.append(r.id)
            continue
        r.expression, r.genes = table.values[i], table.genes
        for c in clinical:
            r.meta[c] = _plain(table.clinical.iloc[i][c])
    report = {"matched": len(records) - len(unmatched), "unmatched": len(unmatched), "first_unmatched": unmatched[:5]}
    if unmatched:
        msg = f"{len(unmatched)} of {len(records)} records have no row in the expression table (by {record_key}), first {unmatched[:5]}"
        if require_all:
            raise MupdError(msg)
        log.warning(msg)
    return report


def table_records(table: BulkTable, clinical: Sequence[str] = ("case_id", "oncotree_code")) -> list[Record]:
    """One image-less record per row (for RNA-only training / vocabulary fitting)."""
    return [Record(k, None, expression=table.values[i], genes=table.genes,
                   meta={c: _plain(table.clinical.iloc[i][c]) for c in clinical if c in table.clinical.columns})
            for i, k in enumerate(table.ids)]


def _plain(v):
    return v.item() if hasattr(v, "item") else v
