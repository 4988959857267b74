"""Class-per-folder patch datasets (``pcam/train/{0,1}/*.jpg``) -> records.

Labels are the class folder names: integers when every name is an integer (PCam's 0/1), else
the index of the name in sorted order (the name is kept in ``meta["class_name"]``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import MupdError, require
from .captions import apply_template
from .records import Record, check_unique_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def patch_folder(
    root: str | os.PathLike,
    *,
    limit_per_class: int | None = None,
    caption_template: str | dict | None = None,
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
) -> list[Record]:
    """Records for every image under ``root/<class>/``; a flat folder of images gives unlabelled
    records. ``limit_per_class`` takes the first N per class in sorted order (deterministic).
    ``caption_template``: a preset name ("pcam") or ``{label: caption}``, see ``captions.TEMPLATES``."""
    root = Path(root)
    require(root.is_dir(), f"patch folder {root} does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    records: list[Record] = []
    if class_dirs:
        names = [d.name for d in class_dirs]
        numeric = all(n.lstrip("-").isdigit() for n in names)
        for index, d in enumerate(class_dirs):
            label = int(d.name) if numeric else index
            files = _images(d, suffixes)
            if limit_per_class is not None:
                files = files[:limit_per_class]
            for f in files:
                rid = f.relative_to(root).with_suffix("").as_posix()
                records.append(Record(rid, f, label, meta={"class_name": d.name}))
    else:
        files = _images(root, suffixes)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        records = [Record(f.stem, f) for f in files]
    if not records:
        raise MupdError(f"patch folder {root} holds no images ({', '.join(suffixes)}) directly or in class sub-folders")
    check_unique_ids(records, f"patch folder {root}")
    if caption_template is not None:
        apply_template(records, caption_template)
    return records


def _images(folder: Path, suffixes) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
