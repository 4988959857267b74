"""Bags for slide-level training: TRIDENT/CLAM feature files (``<slide>.h5`` with ``features``/``coords``)
or a ``mupd data encode`` shard folder (``slide_encoded``), joined to a TCGA-style table (``slide_id`` / ``case_id`` column, ``<GENE>_rnaseq`` columns, or plain
gene columns) — unmatched files and rows are counted and reported, never dropped silently."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MupdError, require
from .slide import read_feature_h5

log = logging.getLogger("mupd.impute")
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif")


@dataclass
class SlideBags:
    ids: list
    bags: list  # (n_i, D) float32
    values: np.ndarray | None  # (B, G) targets as given in the table (None when predicting)
    genes: list
    unmatched: dict = field(default_factory=dict)
    features: str = "TRIDENT/CLAM .h5 tile features"


def _stem(slide_id: str) -> str:
    name = str(slide_id)
    for ext in SLIDE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def feature_files(folder: str | os.PathLike) -> dict[str, Path]:
    folder = Path(folder)
    require(folder.is_dir(), f"feature folder {folder} does not exist (expected TRIDENT/CLAM <slide>.h5 files)")
    files = {p.stem: p for p in sorted(folder.glob("*.h5"))}
    require(bool(files), f"{folder} holds no .h5 feature files")
    return files


def read_target_table(path: str | os.PathLike, join: str):
    """(ids, gene names, values) from a CSV/TSV keyed by ``join`` (slide_id or case_id)."""
    import pandas as pd

    path = Path(path)
    require(path.exists(), f"expression table {path} does not exist")
    sep = "\t" if ".tsv" in path.name.lower() else ","
    try:
        table = pd.read_csv(path, sep=sep, low_memory=False)
    except Exception as exc:
        raise MupdError(f"{path} could not be read as a table ({exc})") from None
    require(join in table.columns, f"{path} has no '{join}' column to join feature files on (columns: {list(table.columns)[:6]})")
    rnaseq = [c for c in table.columns if str(c).endswith("_rnaseq")]
    columns = rnaseq or [c for c in table.columns if c != join and pd.api.types.is_numeric_dtype(table[c])]
    require(bool(columns), f"{path} has no numeric gene columns")
    genes = [str(c)[: -len("_rnaseq")] if rnaseq else str(c) for c in columns]
    values = table[columns].to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise MupdError(f"{path}: {int(bad.sum())} NaN/inf expression values, first row {table[join].iloc[i]!r} gene "
                        f"{genes[j]!r}; drop or fill those rows first")
    return table[join].astype(str).tolist(), genes, values


def feature_sources(features: str | os.PathLike, expected_dim: int | None = None, manifest=None) -> tuple[dict, str]:
    """{slide stem: loader of its (n, D) features} and what the features are, from a folder of .h5
    files or a ``mupd data encode`` shard folder (tiles grouped by the manifest's slide_id)."""
    from .slide_encoded import encoded_bags, is_shard_folder

    if is_shard_folder(features):
        bags, _, name = encoded_bags(features, manifest)
        widths = sorted({b.shape[1] for b in bags.values()})
        require(expected_dim is None or widths == [expected_dim], f"{features}: tile features are {widths}-wide but the "
                                                                  f"model expects {expected_dim}; they come from another encoder")
        return {s: (lambda b=b: b) for s, b in bags.items()}, f"mupd data encode shards: {name}"
    files = feature_files(features)
    return {s: (lambda p=p: read_feature_h5(p, expected_dim)[0]) for s, p in files.items()}, "TRIDENT/CLAM .h5 tile features"


def load_bags(features: str | os.PathLike, table: str | os.PathLike | None = None, *, join: str = "slide_id",
              expected_dim: int | None = None, manifest: str | os.PathLike | None = None) -> SlideBags:
    """Feature files or encode shards (and, for training, their table rows). ``join='case_id'`` matches
    slides whose name starts with the case id (TCGA barcodes), so several slides of one case share its row."""
    files, kind = feature_sources(features, expected_dim, manifest)
    if table is None:
        ids = list(files)
        return SlideBags(ids, [files[i]() for i in ids], None, [], features=kind)
    require(join in ("slide_id", "case_id"), f"join must be slide_id or case_id, not {join!r}")
    keys, genes, values = read_target_table(table, join)
    rows = {}
    for k, key in enumerate(keys):
        rows.setdefault(_stem(key), k)
    matched = []
    for stem in files:
        key = stem if join == "slide_id" else next((c for c in rows if stem.startswith(c)), None)
        if key in rows:
            matched.append((stem, rows[key]))
    used = {r for _, r in matched}
    unmatched = {"feature files without a table row": [s for s in files if s not in {m for m, _ in matched}][:5],
                 "n_feature_files_unmatched": len(files) - len(matched),
                 "n_table_rows_unmatched": len(keys) - len(used)}
    require(bool(matched), f"no feature file or slide of {features} matches a '{join}' of {table} (slides e.g. {list(files)[:3]}, "
                           f"table ids e.g. {keys[:3]}); name files <slide_id>.h5")
    if unmatched["n_feature_files_unmatched"] or unmatched["n_table_rows_unmatched"]:
        log.warning("slide bags: %s", unmatched)
    bags = [files[s]() for s, _ in matched]
    widths = sorted({b.shape[1] for b in bags})
    require(len(widths) == 1, f"feature files in {features} have different widths {widths}; they come from different encoders")
    return SlideBags([s for s, _ in matched], bags, values[[r for _, r in matched]], genes, unmatched, features=kind)
