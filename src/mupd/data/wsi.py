"""Whole-slide images through OpenSlide: tissue mask, tiling at a requested um/px (or magnification
or level), and TRIDENT/CLAM coordinate files.

Coordinates are level-0 pixel (x, y) of each tile's top-left corner. A tile is read at the pyramid
level closest to (not coarser than) the target resolution, ``read_size`` pixels square there, and
resized to ``size``. Coordinates are saved as HDF5 in the CLAM/TRIDENT layout (dataset ``coords``
with ``patch_size``/``patch_level`` attrs, plus ``patch_size_level0``), and such files written by
TRIDENT or CLAM are read instead of re-tiling.

Resolution: the slide's ``openslide.mpp-x`` is used when present. A slide without it needs
``level=`` (tiles at that pyramid level, no rescaling) or an explicit ``assume_mpp=`` (used with a
warning and recorded in the output).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import MupdError, missing_extra, require
from .records import Record

log = logging.getLogger("mupd.data")


def open_slide(path: str | os.PathLike):
    try:
        import openslide
    except ImportError:
        raise missing_extra("openslide-python", "wsi", "reading whole-slide images") from None
    path = Path(path)
    require(path.exists(), f"slide {path} does not exist")
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise MupdError(f"slide {path} could not be opened by OpenSlide ({type(exc).__name__}: {exc}); "
                        "the file is corrupt or not a supported WSI format") from None


def slide_mpp(slide) -> float | None:
    value = slide.properties.get("openslide.mpp-x")
    try:
        mpp = float(value) if value is not None else None
    except ValueError:
        mpp = None
    return mpp if mpp and mpp > 0 else None


@dataclass
class TileGrid:
    """Where to read tiles: level-0 coords, the pyramid level, the read and output sizes."""

    coords: np.ndarray  # (N, 2) int64, level-0 (x, y)
    level: int
    read_size: int  # pixels square at ``level``
    size: int  # output pixels square
    mpp: float | None  # output um/px (None when unknown)
    meta: dict = field(default_factory=dict)

    @property
    def size_level0(self) -> int:
        return int(self.meta.get("patch_size_level0") or self.read_size)

    def __len__(self) -> int:
        return len(self.coords)


def tissue_mask(slide, thumb_max: int = 1024) -> tuple[np.ndarray, float]:
    """Otsu threshold on the saturation of a thumbnail (H&E tissue is saturated, glass is not).
    Returns (mask bool (h, w), level-0 pixels per mask pixel)."""
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    w0, h0 = slide.dimensions
    scale = max(w0, h0) / thumb_max
    thumb = np.asarray(slide.get_thumbnail((max(1, int(w0 / scale)), max(1, int(h0 / scale)))).convert("RGB"))
    sat = rgb2hsv(thumb)[..., 1]
    if float(sat.max() - sat.min()) < 1e-3:
        return np.zeros(sat.shape, bool), w0 / thumb.shape[1]
    mask = sat > max(threshold_otsu(sat), 0.05)
    mask = ndimage.binary_opening(ndimage.binary_closing(mask, iterations=2), iterations=1)
    return mask, w0 / thumb.shape[1]


def plan_tiles(slide, *, mpp: float | None = None, magnification: float | None = None, level: int | None = None,
               size: int = 256, overlap: int = 0, min_tissue: float = 0.5, assume_mpp: float | None = None,
               name: str = "slide", mask: tuple[np.ndarray, float] | None = None) -> TileGrid:
    """Tile a slide at ``mpp`` um/px (or ``magnification``, or a pyramid ``level``) keeping tiles with
    at least ``min_tissue`` tissue. ``overlap`` is in output pixels; ``mask`` = a precomputed
    ``tissue_mask(slide)``."""
    require(size > 0 and 0 <= overlap < size, f"tile size {size} must be > 0 and overlap {overlap} in [0, size)")
    require(sum(x is not None for x in (mpp, magnification, level)) == 1,
            "choose exactly one of mpp=, magnification= or level= (e.g. --mpp 0.5)")
    base = slide_mpp(slide)
    meta = {"slide": name, "level_count": slide.level_count, "base_mpp": base,
            "objective_power": slide.properties.get("openslide.objective-power")}
    if level is not None:
        require(0 <= level < slide.level_count, f"{name}: level {level} does not exist (levels 0..{slide.level_count - 1})")
        ds = float(slide.level_downsamples[level])
        target_ds, out_mpp = ds, (base * ds if base else None)
    else:
        if magnification is not None:
            power = slide.properties.get("openslide.objective-power")
            require(power is not None, f"{name} records no objective power (openslide.objective-power); "
                    "use mpp= or level= instead of magnification=")
            if base is None:
                target_ds, out_mpp = float(power) / magnification, None
            else:
                mpp = base * float(power) / magnification
        if mpp is not None:
            if base is None:
                if assume_mpp is None:
                    raise MupdError(f"{name} has no resolution metadata (openslide.mpp-x); pass level= "
                                    "(--level) or state an assumed base resolution with assume_mpp= (--assume-mpp)")
                warnings.warn(f"{name}: no mpp metadata; ASSUMING {assume_mpp} um/px at level 0 as requested", stacklevel=2)
                base, meta["assumed_mpp"] = float(assume_mpp), True
            target_ds, out_mpp = mpp / base, mpp
    # the finest level that is not coarser than the target; upsampling beyond level 0 is refused
    if target_ds < 1.0 - 1e-6:
        raise MupdError(f"{name}: {out_mpp} um/px is finer than the scan ({base} um/px at level 0); "
                        "ask for a coarser mpp")
    read_level = max((i for i, d in enumerate(slide.level_downsamples) if d <= target_ds * 1.001), default=0)
    level_ds = float(slide.level_downsamples[read_level])
    read_size = max(1, int(round(size * target_ds / level_ds)))
    size0 = int(round(size * target_ds))
    step0 = max(1, int(round((size - overlap) * target_ds)))
    w0, h0 = slide.dimensions
    xs, ys = np.arange(0, w0 - size0 + 1, step0), np.arange(0, h0 - size0 + 1, step0)
    require(len(xs) > 0 and len(ys) > 0, f"{name} ({w0}x{h0}) is smaller than one tile ({size0} px at level 0)")
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    mask, per_px = mask if mask is not None else tissue_mask(slide)
    if not mask.any() and min_tissue > 0:
        raise MupdError(f"{name}: the tissue mask is empty (no saturated tissue found on the thumbnail); "
                        "check the slide, or tile without a mask by passing min_tissue=0 (--min-tissue 0)")
    frac = _tissue_fraction(mask, per_px, grid, size0)
    keep = frac >= min_tissue
    meta.update({"target_downsample": target_ds, "patch_size_level0": size0, "overlap": overlap,
                 "min_tissue": min_tissue, "n_grid": int(len(grid)), "n_tissue": int(keep.sum()),
                 "tissue_fraction_of_slide": float(mask.mean())})
    if not keep.any():
        raise MupdError(f"{name}: no tile reaches {min_tissue:.0%} tissue ({len(grid)} candidates); lower min_tissue")
    return TileGrid(grid[keep].astype(np.int64), read_level, read_size, size, out_mpp, meta)


def _tissue_fraction(mask: np.ndarray, per_px: float, grid: np.ndarray, size0: int) -> np.ndarray:
    integral = np.pad(mask.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    h, w = mask.shape
    x0 = np.clip((grid[:, 0] / per_px).astype(int), 0, w)
    y0 = np.clip((grid[:, 1] / per_px).astype(int), 0, h)
    x1 = np.clip(np.ceil((grid[:, 0] + size0) / per_px).astype(int), 0, w)
    y1 = np.clip(np.ceil((grid[:, 1] + size0) / per_px).astype(int), 0, h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return (integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) / area


def read_tiles(slide, grid: TileGrid, indices=None) -> Iterator[tuple[np.ndarray, "object"]]:
    """Yield ((x, y), RGB PIL tile of ``grid.size``) for the chosen tiles."""
    from PIL import Image

    for k in range(len(grid)) if indices is None else indices:
        x, y = (int(v) for v in grid.coords[k])
        tile = slide.read_region((x, y), grid.level, (grid.read_size, grid.read_size)).convert("RGB")
        if grid.read_size != grid.size:
            tile = tile.resize((grid.size, grid.size), Image.BICUBIC)
        yield grid.coords[k], tile


def save_coords(path: str | os.PathLike, grid: TileGrid) -> Path:
    """CLAM/TRIDENT-style HDF5: ``coords`` (N, 2) with ``patch_size``, ``patch_level`` and ours."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        d = f.create_dataset("coords", data=grid.coords.astype(np.int64))
        d.attrs["patch_size"] = grid.read_size
        d.attrs["patch_level"] = grid.level
        d.attrs["patch_size_level0"] = grid.size_level0
        d.attrs["output_size"] = grid.size
        d.attrs["mpp"] = grid.mpp if grid.mpp is not None else -1.0
        d.attrs["assumed_mpp"] = bool(grid.meta.get("assumed_mpp", False))
    os.replace(tmp, path)
    return path


def read_coords(path: str | os.PathLike, *, size: int | None = None) -> TileGrid:
    """Read a TRIDENT/CLAM coordinate file. ``size`` resizes tiles (default: the stored patch size)."""
    import h5py

    path = Path(path)
    require(path.exists(), f"coordinate file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            require("coords" in f, f"{path} has no 'coords' dataset (TRIDENT/CLAM layout expected)")
            d = f["coords"]
            coords = np.asarray(d[:], dtype=np.int64)
            attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in d.attrs.items()}
    except OSError as exc:
        raise MupdError(f"coordinate file {path} is not readable HDF5 ({exc})") from None
    require(coords.ndim == 2 and coords.shape[1] == 2, f"{path}: coords must be (N, 2), got {coords.shape}")
    require("patch_size" in attrs and "patch_level" in attrs,
            f"{path}: coords lacks the patch_size/patch_level attributes CLAM and TRIDENT write")
    read_size, level = int(attrs["patch_size"]), int(attrs["patch_level"])
    mpp = float(attrs["mpp"]) if float(attrs.get("mpp", -1)) > 0 else None
    out = size or int(attrs.get("output_size", read_size))
    return TileGrid(coords, level, read_size, out, mpp, {"source": str(path), **{k: attrs[k] for k in attrs if k != "mpp"}})


def check_grid(slide, grid: TileGrid, name: str) -> None:
    require(0 <= grid.level < slide.level_count, f"{name}: coordinates use level {grid.level} but the slide has "
            f"{slide.level_count} levels; the coordinate file belongs to another slide")
    w0, h0 = slide.dimensions
    ds = float(slide.level_downsamples[grid.level])
    far = (grid.coords[:, 0] + grid.read_size * ds > w0 + 1) | (grid.coords[:, 1] + grid.read_size * ds > h0 + 1) | (grid.coords < 0).any(1)
    if far.any():
        raise MupdError(f"{name}: {int(far.sum())} tiles lie outside the {w0}x{h0} slide, first "
                        f"{grid.coords[far][:3].tolist()}; the coordinate file belongs to another slide")


def tile_records(slide_path: str | os.PathLike, grid: TileGrid) -> list[Record]:
    """In-memory tile records (meta: slide_id, x, y, level, mpp) of a planned grid."""
    slide = open_slide(slide_path)
    check_grid(slide, grid, str(slide_path))
    name = Path(slide_path).name
    return [Record(f"{Path(name).stem}_{int(xy[0])}_{int(xy[1])}", np.asarray(tile),
                   meta={"slide_id": name, "x": int(xy[0]), "y": int(xy[1]), "level": grid.level, "mpp": grid.mpp})
            for xy, tile in read_tiles(slide, grid)]
