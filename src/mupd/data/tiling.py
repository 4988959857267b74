"""The tiling job behind ``mupd data tile``: slide(s) -> PNG tiles + coordinates + a manifest.

Output folder::

    OUT/coords/<slide>.h5          CLAM/TRIDENT-style coordinates (written first: the plan)
    OUT/tiles/<slide>/<x>_<y>.png  one tile per coordinate (level-0 x, y), written atomically
    OUT/masks/<slide>.png          the tissue mask thumbnail (to check the detection by eye)
    OUT/manifest.csv               id, path, slide_id, x, y, level, mpp (written last)

Re-running the same command resumes: existing coordinates are reused and finished tiles kept.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require
from .records import Record, write_manifest
from .wsi import check_grid, open_slide, plan_tiles, read_coords, read_tiles, save_coords, tissue_mask

log = logging.getLogger("mupd.data")

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


def find_slides(source: str | os.PathLike) -> list[Path]:
    source = Path(source)
    require(source.exists(), f"{source} does not exist")
    if source.is_file():
        return [source]
    slides = sorted(p for p in source.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
    require(bool(slides), f"{source} holds no slide files ({', '.join(SLIDE_SUFFIXES)})")
    return slides


def tile_slides(source: str | os.PathLike, out: str | os.PathLike, *, mpp: float | None = None,
                magnification: float | None = None, level: int | None = None, size: int = 256, overlap: int = 0,
                min_tissue: float = 0.5, assume_mpp: float | None = None, coords_dir: str | os.PathLike | None = None,
                progress: bool = True) -> tuple[Path, list[Record]]:
    """Tile every slide of ``source`` (a file or folder). ``coords_dir``: read ``<slide>.h5``
    TRIDENT/CLAM coordinates from there instead of planning tiles."""
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out)
    records: list[Record] = []
    for slide_path in find_slides(source):
        stem = slide_path.stem
        slide = open_slide(slide_path)
        coord_file = out / "coords" / f"{stem}.h5"
        if coords_dir is not None:
            given = Path(coords_dir) / f"{stem}.h5"
            require(given.exists(), f"no coordinate file {given} for slide {slide_path.name}")
            grid = read_coords(given, size=size if size else None)
            save_coords(coord_file, grid)
        elif coord_file.exists():
            grid = read_coords(coord_file)
            require(grid.size == size, f"{coord_file} was made with size {grid.size}, not {size}; use another --out "
                    "or delete that folder to re-tile")
        else:
            mask = tissue_mask(slide)
            grid = plan_tiles(slide, mpp=mpp, magnification=magnification, level=level, size=size, overlap=overlap,
                              min_tissue=min_tissue, assume_mpp=assume_mpp, name=slide_path.name, mask=mask)
            (out / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask[0] * 255).astype(np.uint8)).save(out / "masks" / f"{stem}.png")
            save_coords(coord_file, grid)
            log.info("%s: %d tiles (%s)", slide_path.name, len(grid), grid.meta)
        check_grid(slide, grid, slide_path.name)
        tile_dir = out / "tiles" / stem
        tile_dir.mkdir(parents=True, exist_ok=True)
        todo = [k for k, (x, y) in enumerate(grid.coords) if not (tile_dir / f"{x}_{y}.png").exists()]
        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc=f"tile {slide_path.name}", disable=not progress, unit="tile")
        for (x, y), tile in read_tiles(slide, grid, todo):
            target = tile_dir / f"{x}_{y}.png"
            tmp = tile_dir / f".{x}_{y}.tmp.png"
            tile.save(tmp)
            os.replace(tmp, target)
            bar.update(1)
        bar.close()
        for x, y in grid.coords:
            records.append(Record(f"{stem}_{x}_{y}", tile_dir / f"{x}_{y}.png",
                                  meta={"slide_id": slide_path.name, "x": int(x), "y": int(y), "level": grid.level,
                                        "mpp": grid.mpp if grid.mpp is not None else float("nan")}))
    if not records:
        raise MupdError(f"no tiles were produced from {source}")
    manifest = write_manifest(records, out / "manifest.csv")
    return manifest, records


def existing_tiles(out: str | os.PathLike) -> Sequence[Path]:
    return sorted(Path(out).glob("tiles/*/*.png"))
