"""Image sets for evaluation: a folder (recursive png/jpg/tif) or a CSV manifest with a ``path`` column.

Every image is decoded to RGB uint8 and, when ``image_size`` is given, resized (bicubic, PIL) to a
square of that side, so real and generated sets go through the same preprocessing. ``mupd:*`` PNG
text chunks (written by ``mupd.pipelines.pngmeta``) are collected so the report can say how the
generated images were sampled.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MupdError, require

if TYPE_CHECKING:  # torch loads on first decode, so listing/checking image sets stays fast
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class ImageSet:
    """Decoded images (N,3,H,W) uint8 plus where they came from and how they were preprocessed."""

    images: torch.Tensor
    paths: list[Path]
    source: str
    original_sizes: list[tuple[int, int]]
    image_size: int | None
    labels: list[str | None] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def preprocessing(self) -> dict:
        return {
            "decoded_as": "RGB uint8",
            "resize": f"bicubic to {self.image_size}x{self.image_size}" if self.image_size else "none",
            "size_hw": list(self.size),
            "original_sizes": sorted({f"{w}x{h}" for w, h in self.original_sizes}),
        }


def list_images(source: str | os.PathLike) -> tuple[list[Path], list[str | None]]:
    """Image paths (sorted) and labels: from a folder, recursively, or a CSV manifest (``path`` column,
    optional ``label``; relative paths resolve against the manifest's folder). Labels of a folder are
    the immediate parent folder names."""
    source = Path(source)
    require(source.exists(), f"{source} does not exist; give a folder of images or a CSV manifest with a 'path' column")
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        require(bool(paths), f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)}), searched recursively")
        labels = [p.parent.name if p.parent != source else None for p in paths]
        return paths, labels
    require(source.suffix.lower() in (".csv", ".tsv"),
            f"{source} is neither a folder nor a .csv manifest; give a folder of images or a CSV with a 'path' column")
    with open(source, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t" if source.suffix.lower() == ".tsv" else ","))
    require(bool(rows) and "path" in rows[0], f"{source}: the manifest needs a 'path' column (found {list(rows[0]) if rows else 'no rows'})")
    paths = [Path(r["path"]) if Path(r["path"]).is_absolute() else source.parent / r["path"] for r in rows]
    labels = [r.get("label") for r in rows]
    return paths, labels


def _read_png_metadata(im: Image.Image) -> dict:
    out = {}
    for key, value in (getattr(im, "text", None) or {}).items():
        if key.startswith("mupd:"):
            try:
                out[key] = json.loads(value)
            except (json.JSONDecodeError, TypeError):
                out[key] = value
    return out


def read_image(path: Path, image_size: int | None = None) -> tuple[np.ndarray, tuple[int, int], dict]:
    """(H,W,3) uint8, the original (width, height), and ``mupd:*`` metadata. Corrupt -> MupdError."""
    if not path.exists():
        raise MupdError(f"{path} does not exist (listed in the image set); fix the path or the manifest")
    try:
        with Image.open(path) as im:
            meta = _read_png_metadata(im)
            im.load()
            original = im.size
            rgb = im.convert("RGB")
    except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as exc:
        raise MupdError(f"{path} is not a readable image ({exc}); remove or replace the file") from None
    if image_size is not None and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8), original, meta


def load_image_set(source: str | os.PathLike, *, max_images: int | None = None, image_size: int | None = None,
                   seed: int = 0, progress: bool = False) -> ImageSet:
    """Read up to ``max_images`` images (a fixed-seed random subset when there are more, so classes
    in sorted folders stay mixed). Without ``image_size`` all images must have one size."""
    paths, labels = list_images(source)
    if max_images is not None and len(paths) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False))
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    arrays, sizes, metas = [], [], []
    iterator = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc=f"reading {Path(source).name}", unit="img")
    for path in iterator:
        array, original, meta = read_image(path, image_size)
        if arrays and array.shape != arrays[0].shape:
            raise MupdError(
                f"{path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; "
                "pass --image-size PX to resize every image the same way")
        arrays.append(array)
        sizes.append(original)
        metas.append(meta)
    import torch

    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, list(paths), str(source), sizes, image_size, list(labels), metas)


def summarise_metadata(metadata: list[dict]) -> dict:
    """Every ``mupd:*`` key found, with its distinct values and how many images carry each
    (seeds are summarised as a count and range rather than listed)."""
    with_meta = [m for m in metadata if m]
    summary: dict = {"images_with_metadata": len(with_meta), "images": len(metadata), "keys": {}}
    keys = sorted({k for m in with_meta for k in m})
    for key in keys:
        values = [m[key] for m in with_meta if key in m]
        if key == "mupd:seed" and all(isinstance(v, (int, float)) for v in values):
            summary["keys"][key] = {"count": len(values), "distinct": len(set(values)), "min": min(values), "max": max(values)}
            continue
        counts = Counter(json.dumps(v, sort_keys=True, default=str) for v in values)
        summary["keys"][key] = {
            "count": len(values),
            "distinct": len(counts),
            "values": [{"value": json.loads(v), "images": n} for v, n in counts.most_common(10)],
        }
    return summary
