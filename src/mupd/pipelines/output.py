"""What a pipeline returns: the images plus each image's generation parameters.

``PipelineOutput`` behaves like the list of images (``out[0]``, ``len(out)``, ``for im in out``);
``out.parameters[i]`` holds the ``mupd:*`` record of image i and ``out.save(folder)`` writes PNGs
carrying it in tEXt chunks plus a ``manifest.csv``.

Images: ``"pil"`` (RGB; 1-channel targets as "L"; other channel counts as a side-by-side grey
montage of the channels, the DeepLIIF panel layout), ``"np"`` float32 (B, H, W, C) in [0, 1],
``"pt"`` float32 (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_write_text
from ..errors import require
from .pngmeta import save_png

OUTPUT_TYPES = ("pil", "np", "pt")
MANIFEST_COLUMNS = ("file", "seed", "sampler", "steps", "guidance", "conditions", "model", "extra")


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W, C)."""
    x = ((pixels.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(array: np.ndarray) -> Image.Image:
    """uint8 (H, W, C) -> PIL: RGB for 3 channels, L for 1, a horizontal grey montage otherwise."""
    channels = array.shape[-1]
    if channels == 3:
        return Image.fromarray(array, "RGB")
    if channels == 1:
        return Image.fromarray(array[..., 0], "L")
    return Image.fromarray(np.concatenate([array[..., c] for c in range(channels)], axis=1), "L")


@dataclass
class PipelineOutput:
    images: Any  # list[PIL.Image] | np.ndarray | torch.Tensor
    parameters: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. the RNA gene-match summary

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor, parameters: list[dict], output_type: str = "pil") -> "PipelineOutput":
        require(output_type in OUTPUT_TYPES, f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        # Quantise once, so every output type holds exactly the pixels a saved PNG holds.
        array = to_uint8(pixels)
        if output_type == "pil":
            images = [to_pil(a) for a in array]
        elif output_type == "np":
            images = array.astype(np.float32) / 255.0
        else:
            images = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0
        return cls(images, parameters)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]

    def __iter__(self):
        return iter(self.images)

    def pil(self, i: int) -> Image.Image:
        image = self.images[i]
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, torch.Tensor):
            image = image.permute(1, 2, 0).numpy()
        return to_pil((np.asarray(image) * 255.0).round().astype(np.uint8))

    def save(self, folder: str | os.PathLike, prefix: str = "image", start: int = 0,
             manifest: bool = True) -> list[dict]:
        """Write ``<prefix>-<k>.png`` (k from ``start``) with their parameters; returns manifest rows.

        With ``manifest=True`` the rows are appended to ``folder/manifest.csv``.
        """
        folder = Path(folder)
        rows = []
        for i in range(len(self)):
            name = f"{prefix}-{start + i:05d}.png"
            params = self.parameters[i] if i < len(self.parameters) else {}
            save_png(self.pil(i), folder / name, params)
            rows.append(manifest_row(name, params))
        if manifest:
            append_manifest(folder / "manifest.csv", rows)
        return rows


def manifest_row(file: str, params: dict, **columns) -> dict:
    """One manifest row from an image's ``mupd:*`` parameters (JSON text for nested values)."""
    dump = lambda v: v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, sort_keys=True)  # noqa: E731
    core = ("mupd:seed", "mupd:sampler", "mupd:steps", "mupd:guidance", "mupd:conditions", "mupd:model")
    row = {"file": file}
    for key in core:
        row[key[5:]] = dump(params.get(key))
    extra = {k[5:]: v for k, v in params.items() if k not in core}
    row["extra"] = json.dumps(extra, sort_keys=True) if extra else ""
    row.update({k: dump(v) for k, v in columns.items()})
    return row


def append_manifest(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Append rows to a CSV manifest (rewritten atomically; columns are the union, in order)."""
    path = Path(path)
    existing: list[dict] = []
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            existing = list(csv.DictReader(fh))
    all_rows = existing + rows
    columns: list[str] = []
    for row in all_rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write_text(path, buffer.getvalue())
    return path
