"""Registered stain panels -> paired records (``source_image`` -> ``image``) for stain translation.

DeepLIIF (``Sample_Dataset/{train,test}/*.png``): each file is six registered 512x512 panels side
by side (3072x512): Ki67 IHC, hematoxylin, DAPI, Lap2, Ki67 multiplex IF, segmentation. Choose the
source panel and the target panel(s) by name; several target panels give a multi-channel target
(an (H, W, 3k) uint8 stack) for a non-RGB autoencoder.

A generic paired manifest is any manifest with ``path`` (target) and ``source_path`` columns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require
from .images import read_image
from .records import Record, check_unique_ids, read_manifest

DEEPLIIF_PANELS = ("ihc", "hematoxylin", "dapi", "lap2", "ki67_mif", "segmentation")


def split_panels(image: np.ndarray, n: int, where: str) -> list[np.ndarray]:
    h, w = image.shape[:2]
    require(w == n * h, f"{where} is {w}x{h}; a DeepLIIF image must be {n} square panels side by side ({n * h}x{h})")
    return [image[:, k * h:(k + 1) * h] for k in range(n)]


def deepliif_records(root: str | os.PathLike, split: str = "train", *, source: str = "ihc",
                     target: str | Sequence[str] = "ki67_mif", limit: int | None = None) -> list[Record]:
    """Paired records from a DeepLIIF ``Sample_Dataset`` folder (``root/<split>/*.png``)."""
    root = Path(root)
    folder = root / split if (root / split).is_dir() else root
    files = sorted(folder.glob("*.png"))
    require(bool(files), f"{folder} holds no DeepLIIF .png images (expected Sample_Dataset/{split}/*.png)")
    targets = (target,) if isinstance(target, str) else tuple(target)
    for name in (source, *targets):
        require(name in DEEPLIIF_PANELS, f"unknown DeepLIIF panel '{name}'; panels: {', '.join(DEEPLIIF_PANELS)}")
    records = []
    for f in files[:limit]:
        panels = split_panels(np.asarray(read_image(f)), len(DEEPLIIF_PANELS), str(f))
        pick = {n: p for n, p in zip(DEEPLIIF_PANELS, panels)}
        same = [t for t in targets if t != source and np.array_equal(pick[t], pick[source])]
        # DeepLIIF's public Sample_Dataset/test repeats the IHC panel six times: no real target there.
        require(not same, f"{f}: the target panel(s) {same} are pixel-identical to the '{source}' panel, so this "
                          "file holds no real target; use files with registered targets (e.g. the train split)")
        image = pick[targets[0]] if len(targets) == 1 else np.concatenate([pick[t] for t in targets], axis=2)
        records.append(Record(f"{split}/{f.stem}", np.ascontiguousarray(image), source_image=np.ascontiguousarray(pick[source]),
                              meta={"file": f.name, "source_panel": source, "target_panels": "+".join(targets)}))
    check_unique_ids(records, str(folder))
    return records


def is_deepliif_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    probe = next(iter(sorted(path.glob("*.png"))), None) or next(iter(sorted(path.glob("*/*.png"))), None)
    if probe is None or "deepliif" not in str(path).lower() and not (path / "train").is_dir():
        return False
    from PIL import Image

    with Image.open(probe) as im:
        w, h = im.size
    return w == len(DEEPLIIF_PANELS) * h


def paired_manifest(path: str | os.PathLike) -> list[Record]:
    """A manifest whose rows all name a ``source_path`` next to the target ``path``."""
    records = read_manifest(path)
    unpaired = [r.id for r in records if r.source_image is None]
    if unpaired:
        raise MupdError(f"paired manifest {path}: {len(unpaired)} rows have no source_path, first {unpaired[:3]}")
    return records
