"""Loading spots for ``train`` / ``predict`` with the checks that must happen before any model loads:
sections present (with an image), no spot whose crop leaves the image, counts finite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MupdError, require


def her2st_root(data: str | os.PathLike | None) -> Path:
    from ..settings import sample_data_dir

    if data is not None:
        return Path(data)
    root = sample_data_dir()
    require(root is not None, "no her2st folder given and the sample data was not found; pass --data HER2ST_DIR "
                              "or set MUPD_SAMPLE_DATA")
    return root / "her2st"


def check_sections(root: Path, sections) -> list[str]:
    from ..data.spatial import her2st_sections

    require((root / "ST-cnts").is_dir(), f"{root} is not a her2st folder (no ST-cnts/); pass --data HER2ST_DIR")
    have = her2st_sections(root)
    sections = list(sections or have)
    absent = [s for s in sections if s not in have]
    require(not absent, f"sections {absent} have no counts or no H&E image in {root}; sections with both: {have}")
    return sections


def refuse_outside(table, where: str) -> None:
    """A spot whose crop leaves the image means the coordinates belong to another image (or scale)."""
    outside = {k: v for k, v in table.skipped.items() if k.startswith("outside")}
    if outside:
        reason, entry = next(iter(outside.items()))
        raise MupdError(f"{where}: {entry['count']} spots lie {reason}, first {entry['first']}; the spot coordinates do "
                        "not match this image (wrong image, scale or crop size)")


def load_her2st_spots(root: Path, sections, image_size: int, crop: int = 224):
    from ..data.spatial import load_her2st

    sections = check_sections(root, sections)
    table = load_her2st(root, sections, crop=crop, size=image_size)
    refuse_outside(table, f"her2st {root}")
    return drop_empty(table)


def load_anndata_spots(path, image, image_size: int):
    from ..data.spatial import load_visium

    table = load_visium(path, image, size=image_size)
    refuse_outside(table, str(path))
    return drop_empty(table) if table.meta.get("values") == "raw counts" else table


def drop_empty(table):
    """Spots with zero total counts have no log1p-CPM; drop and report them (never silently)."""
    bad = ~np.isfinite(table.counts).all(1)
    if bad.any():
        k = int(np.where(bad)[0][0])
        raise MupdError(f"spot {table.ids[k]!r} has NaN/inf counts ({int(bad.sum())} spots in all); fix the count table")
    empty = np.where(table.counts.sum(1) <= 0)[0]
    if len(empty):
        keep = np.setdiff1d(np.arange(len(table)), empty)
        table.skipped["zero total counts"] = {"count": len(empty), "first": [table.ids[i] for i in empty[:5]]}
        table.ids, table.section = [table.ids[i] for i in keep], [table.section[i] for i in keep]
        table.images, table.counts, table.coords = table.images[keep], table.counts[keep], table.coords[keep]
    return table
