"""Spatial transcriptomics: spots with counts and an H&E crop around each spot.

- her2st layout (Andersson et al. 2021): ``ST-cnts/<section>.tsv.gz`` (rows ``"{x}x{y}"``, gene
  columns), ``ST-spotfiles/<section>_selection.tsv`` (array x/y -> ``pixel_x``/``pixel_y`` in the
  full-resolution image), ``ST-imgs/<section>/*.jpg``. Sections without an image are skipped and
  reported.
- Visium / AnnData: an ``.h5ad`` (or stLearn's AnnData ``.h5``) with ``obsm["spatial"]`` (x, y in
  full-resolution pixels) and ``uns["spatial"][library]["scalefactors"]``; the image is either
  given (``image=``) or taken from ``uns["spatial"][library]["images"]["hires"]``.

Spots whose crop would leave the image, and spots present in only one of the count/position
tables, are skipped and reported (count + first ids in ``SpotTable.skipped``), never dropped
silently; ``strict=True`` turns any skip into a ``MupdError``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MupdError, require
from .images import read_image
from .records import Record

log = logging.getLogger("mupd.data")


@dataclass
class SpotTable:
    ids: list[str]
    section: list[str]
    images: np.ndarray  # (N, S, S, 3) uint8 crops
    counts: np.ndarray  # (N, G) float32 (raw counts unless meta["values"] says otherwise)
    genes: list[str]
    coords: np.ndarray  # (N, 2) float, (x, y) pixel centre in the source image
    meta: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # reason -> {"count": n, "first": [...]}

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> list[Record]:
        return [Record(i, self.images[k], expression=self.counts[k], genes=self.genes,
                       meta={"section": self.section[k], "x": float(self.coords[k, 0]), "y": float(self.coords[k, 1])})
                for k, i in enumerate(self.ids)]


class _Skips:
    def __init__(self, strict: bool, where: str):
        self.strict, self.where, self.reasons = strict, where, {}

    def add(self, reason: str, ids: Sequence[str]) -> None:
        ids = [str(i) for i in ids]
        if not ids:
            return
        if self.strict:
            raise MupdError(f"{self.where}: {len(ids)} spots {reason}, first {ids[:5]}")
        entry = self.reasons.setdefault(reason, {"count": 0, "first": []})
        entry["count"] += len(ids)
        entry["first"] = (entry["first"] + ids)[:5]
        log.warning("%s: skipped %d spots (%s), first %s", self.where, len(ids), reason, ids[:5])


def crop_spots(image: np.ndarray, xy: np.ndarray, crop: int, size: int | None, ids: Sequence[str], skips: _Skips):
    """Square crops of side ``crop`` centred on (x, y); out-of-image spots go to ``skips``."""
    from PIL import Image

    h, w = image.shape[:2]
    half = crop // 2
    x0 = np.round(xy[:, 0]).astype(int) - half
    y0 = np.round(xy[:, 1]).astype(int) - half
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + crop <= w) & (y0 + crop <= h) & np.isfinite(xy).all(1)
    skips.add(f"outside the {w}x{h} image with a {crop}px crop", [ids[k] for k in np.where(~inside)[0]])
    crops = []
    for k in np.where(inside)[0]:
        patch = image[y0[k]:y0[k] + crop, x0[k]:x0[k] + crop]
        if size is not None and size != crop:
            patch = np.asarray(Image.fromarray(patch).resize((size, size), Image.BICUBIC))
        crops.append(patch)
    side = size or crop
    return inside, (np.stack(crops) if crops else np.zeros((0, side, side, 3), np.uint8))


def her2st_sections(root: str | os.PathLike) -> list[str]:
    """Sections that have both counts and an image."""
    root = Path(root)
    with_counts = {p.name.split(".")[0] for p in (root / "ST-cnts").glob("*.tsv*")}
    with_image = {p.name for p in (root / "ST-imgs").iterdir() if p.is_dir()} if (root / "ST-imgs").is_dir() else set()
    return sorted(with_counts & with_image)


def load_her2st(root: str | os.PathLike, sections: Sequence[str] | None = None, *, crop: int = 224,
                size: int | None = None, strict: bool = False, max_spots: int | None = None) -> SpotTable:
    """Spots of the given sections (default: every section with an image). ``crop`` is in
    full-resolution pixels (224 px ~ 175 um); ``size`` resizes crops; ``max_spots`` per section."""
    root = Path(root)
    require((root / "ST-cnts").is_dir(), f"{root} is not a her2st folder (no ST-cnts/)")
    available = her2st_sections(root)
    sections = list(sections) if sections else available
    skips = _Skips(strict, f"her2st {root}")
    skips.add("in sections without an H&E image", [s for s in sections if s not in available])
    parts = []
    for s in [s for s in sections if s in available]:
        parts.append(_her2st_section(root, s, crop, size, skips, max_spots))
    require(bool(parts), f"her2st {root}: none of the sections {sections} has counts and an image (available: {available})")
    genes = sorted(set().union(*[set(p[3]) for p in parts])) if len(parts) > 1 else parts[0][3]
    counts, filled = [], {}
    for ids, sec, imgs, g, c, xy in parts:
        if len(g) < len(genes):
            filled[sec[0] if sec else "?"] = len(genes) - len(g)
        idx = {x: k for k, x in enumerate(g)}
        full = np.zeros((len(ids), len(genes)), np.float32)  # a gene absent from a section's table had 0 counts
        cols = [idx.get(x) for x in genes]
        have = [k for k, c_ in enumerate(cols) if c_ is not None]
        full[:, have] = c[:, [cols[k] for k in have]]
        counts.append(full)
    return SpotTable(
        ids=[i for p in parts for i in p[0]], section=[x for p in parts for x in p[1]],
        images=np.concatenate([p[2] for p in parts]), counts=np.concatenate(counts), genes=list(genes),
        coords=np.concatenate([p[5] for p in parts]),
        meta={"source": "her2st", "crop_px": crop, "um_per_px": 0.78, "values": "raw counts",
              "genes_absent_from_section_set_to_0": filled}, skipped=skips.reasons)


def _her2st_section(root: Path, s: str, crop: int, size: int | None, skips: _Skips, max_spots: int | None):
    import pandas as pd

    cnt_path = next((root / "ST-cnts").glob(f"{s}.tsv*"))
    spot_path = root / "ST-spotfiles" / f"{s}_selection.tsv"
    require(spot_path.exists(), f"her2st section {s}: {spot_path} is missing")
    try:
        counts = pd.read_csv(cnt_path, sep="\t", index_col=0)
        spots = pd.read_csv(spot_path, sep="\t")
    except Exception as exc:
        raise MupdError(f"her2st section {s}: could not read {cnt_path.name} / {spot_path.name} ({exc})") from None
    require({"x", "y", "pixel_x", "pixel_y"} <= set(spots.columns), f"{spot_path} lacks x, y, pixel_x, pixel_y columns")
    if "selected" in spots.columns:
        spots = spots[spots["selected"] == 1]
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    counts.index = counts.index.astype(str)
    dup = counts.index[counts.index.duplicated()].tolist()
    require(not dup, f"{cnt_path}: duplicate spot ids {dup[:5]}")
    common = [i for i in counts.index if i in spots.index]
    skips.add(f"of section {s} with counts but no position", [f"{s}_{i}" for i in counts.index if i not in spots.index])
    skips.add(f"of section {s} with a position but no counts", [f"{s}_{i}" for i in spots.index if i not in counts.index])
    if max_spots is not None:
        common = common[:max_spots]
    pictures = sorted((root / "ST-imgs" / s).glob("*.jp*g"))
    require(bool(pictures), f"her2st section {s}: no .jpg image in {root / 'ST-imgs' / s}")
    image = np.asarray(read_image(pictures[0]))
    xy = spots.loc[common, ["pixel_x", "pixel_y"]].to_numpy(float)
    ids = [f"{s}_{i}" for i in common]
    inside, crops = crop_spots(image, xy, crop, size, ids, skips)
    keep = np.where(inside)[0]
    values = counts.loc[common].to_numpy(np.float32)[keep]
    return [ids[k] for k in keep], [s] * len(keep), crops, [str(g) for g in counts.columns], values, xy[keep]


def load_visium(path: str | os.PathLike, image: str | os.PathLike | None = None, *, library_id: str | None = None,
                scale: str | float = "auto", crop: int | None = None, size: int | None = None,
                strict: bool = False) -> SpotTable:
    """Spots of an AnnData/Visium file. ``scale`` maps ``obsm["spatial"]`` (full-resolution px) to
    the image: a number, "hires"/"lowres" (the stored scale factors), "fullres" (1.0), or "auto" =
    the first of fullres, hires, lowres under which every spot lies inside the image (reported in
    ``meta["scale"]``). ``crop`` defaults to twice the spot diameter in image pixels (>= 16)."""
    import anndata

    path = Path(path)
    require(path.exists(), f"AnnData file {path} does not exist")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:
        raise MupdError(f"{path} could not be read as AnnData ({type(exc).__name__}: {exc}); 10x "
                        "'filtered_feature_bc_matrix.h5' files need converting with scanpy.read_visium first") from None
    require("spatial" in adata.obsm, f"{path} has no obsm['spatial'] spot coordinates")
    spatial = adata.uns.get("spatial", {})
    lib = library_id or (next(iter(spatial)) if spatial else None)
    require(lib is None or lib in spatial, f"{path}: library '{library_id}' not in uns['spatial'] ({list(spatial)})")
    factors = dict(spatial[lib].get("scalefactors", {})) if lib else {}
    if image is not None:
        picture = np.asarray(read_image(image))
    else:
        stored = spatial.get(lib, {}).get("images", {}).get("hires") if lib else None
        require(stored is not None and np.asarray(stored).ndim == 3,
                f"{path} stores no hires image; pass image= (the full-resolution or hires H&E)")
        picture = np.asarray(stored)
        picture = (picture * 255).round().astype(np.uint8) if picture.dtype != np.uint8 else picture
        if scale == "auto":
            scale = "hires"
    xy_full = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
    factor, scale_name = _resolve_scale(scale, factors, xy_full, picture.shape, path)
    xy = xy_full * factor
    spot_px = float(factors.get("spot_diameter_fullres", 100.0)) * factor
    crop = crop or max(16, int(round(2 * spot_px)))
    ids = [str(i) for i in adata.obs_names]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    require(not dup, f"{path}: duplicate spot ids {dup[:5]}")
    skips = _Skips(strict, f"visium {path.name}")
    inside, crops = crop_spots(picture, xy, crop, size, ids, skips)
    keep = np.where(inside)[0]
    x = adata.X[keep]
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    kind = "raw counts" if np.all(x >= 0) and np.allclose(x, np.round(x)) else "normalised (not raw counts)"
    return SpotTable([ids[k] for k in keep], [str(lib)] * len(keep), crops, x, [str(g) for g in adata.var_names],
                     xy[keep], meta={"source": "visium", "library": lib, "scale": scale_name, "scale_factor": factor,
                                     "crop_px": crop, "values": kind}, skipped=skips.reasons)


def _resolve_scale(scale, factors: dict, xy: np.ndarray, shape, path: Path) -> tuple[float, str]:
    named = {"fullres": 1.0, "hires": factors.get("tissue_hires_scalef"), "lowres": factors.get("tissue_lowres_scalef")}
    if isinstance(scale, (int, float)):
        return float(scale), f"given ({scale})"
    if scale != "auto":
        require(scale in named and named[scale] is not None, f"{path}: scale '{scale}' unknown or not stored "
                f"(stored: {sorted(k for k, v in factors.items() if 'scalef' in k)})")
        return float(named[scale]), scale
    h, w = shape[:2]
    for name in ("fullres", "hires", "lowres"):
        f = named[name]
        if f is not None and (xy * f).min() >= 0 and (xy[:, 0] * f).max() < w and (xy[:, 1] * f).max() < h:
            log.info("%s: spot coordinates fit the %dx%d image at the %s scale (%.4g)", path.name, w, h, name, f)
            return float(f), name
    raise MupdError(f"{path}: spot coordinates fit the {w}x{h} image under no stored scale factor "
                    f"({ {k: v for k, v in named.items() if v} }); pass scale= explicitly or the matching image")
