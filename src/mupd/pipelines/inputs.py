"""User inputs for the pipelines: images (validated) and RNA profiles (parsed from files, mapped
through the model's saved gene vocabulary), and batch files of conditions.

RNA specs accepted by ``read_rna`` (the CLI's ``--rna``):

* ``FILE.h5ad:OBS_NAME``      one observation of an AnnData file (``:OBS`` optional if it has one row)
* ``TABLE.csv[.gz]:SLIDE_ID`` a row of a TCGA-style table (``slide_id``/``case_id`` column,
  ``<GENE>_rnaseq`` columns), or of any samples x genes table keyed by its first column
* ``FILE.tsv``                a two-column gene -> value table (header optional)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import MupdError, require

# ---------------------------------------------------------------------------------------- images
def load_image(obj: Any, *, what: str = "image", size: int | tuple[int, int] | None = None,
               min_size: int = 8) -> Image.Image:
    """An RGB PIL image from a path, PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` tensor.

    ``size`` (side or (width, height)) demands that exact size. Grey, palette, 16-bit and CMYK
    images are refused rather than silently converted (a wrong mode usually means a wrong file).
    """
    name = str(obj) if isinstance(obj, (str, os.PathLike)) else f"the {what}"
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.exists():
            raise MupdError(f"{what} {path} does not exist; check the path")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise MupdError(f"{what} {path} is not a readable image ({exc}); the file is corrupt or not an image") from None
    elif isinstance(obj, Image.Image):
        image = obj
    elif isinstance(obj, np.ndarray) or hasattr(obj, "detach"):  # numpy array or torch tensor
        arr = obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
        require(arr.ndim == 3 and arr.shape[-1] == 3,
                f"{what} array must be (H, W, 3) or (3, H, W) uint8, got shape {arr.shape}")
        require(arr.dtype == np.uint8, f"{what} array must be uint8 in [0, 255], got {arr.dtype}; "
                                       "scale with (x * 255).round().astype('uint8')")
        image = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    else:
        raise MupdError(f"{what} must be a path, PIL image, uint8 array or tensor; got {type(obj).__name__}")
    if image.mode == "RGBA":
        alpha = np.asarray(image.getchannel("A"))
        require(alpha.min() == 255, f"{name} has transparent pixels (RGBA); flatten it onto a background first")
        image = image.convert("RGB")
    require(image.mode == "RGB",
            f"{name} has mode {image.mode}; an RGB image is expected (convert it, e.g. with "
            "PIL: Image.open(p).convert('RGB'), if it really is a colour stain image)")
    if size is not None:
        want = (size, size) if isinstance(size, int) else tuple(size)
        require(image.size == want,
                f"{name} is {image.size[0]}x{image.size[1]} px but this model works on "
                f"{want[0]}x{want[1]} px tiles; crop or resize it (or use the tiled 'stain'/'translate' path)")
    require(min(image.size) >= min_size, f"{name} is {image.size[0]}x{image.size[1]} px; at least {min_size} px per side is needed")
    return image


def fit_to_tile(image: Image.Image, side: int, *, what: str = "image") -> tuple[Image.Image, str, list | None]:
    """The pipelines' size rule for an image that must fill one model tile (vary's SDEdit, augment):
    centre-crop to a square, then resize (bicubic) to the model's ``side``.

    Returns (image, one-line notice or "", original [width, height] or None when untouched)."""
    if image.size == (side, side):
        return image, "", None
    w, h = image.size
    short = min(w, h)
    left, top = (w - short) // 2, (h - short) // 2
    fitted = image.crop((left, top, left + short, top + short))
    if short != side:
        fitted = fitted.resize((side, side), Image.Resampling.BICUBIC)
    crop = "" if w == h else f"centre-cropped to {short}x{short} and "
    return fitted, f"{what} is {w}x{h} px; {crop}resized to the model's {side}x{side} px", [w, h]


def image_to_tensor(images: Iterable[Image.Image]):
    """PIL RGB images (same size) -> float tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    arrays = [np.asarray(im, dtype=np.float32) for im in images]
    require(len({a.shape for a in arrays}) == 1, f"images differ in size: {sorted({a.shape for a in arrays})}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def image_to_uint8(images: Iterable[Image.Image]):
    """PIL RGB images -> uint8 tensor (B, 3, H, W) (the image encoders' batch format)."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------- RNA
@dataclass
class RnaProfile:
    """One expression profile as given by the user (raw gene names and values)."""

    values: np.ndarray  # (G,) float32
    genes: list[str]
    source: str
    normalised: str | None = None  # a normalisation the values already carry (None: raw counts)

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        require(len(self.genes) == self.values.shape[0],
                f"RNA from {self.source}: {len(self.genes)} gene names but {self.values.shape[0]} values")
        bad = ~np.isfinite(self.values)
        if bad.any():
            names = [g for g, b in zip(self.genes, bad) if b][:5]
            raise MupdError(f"RNA from {self.source}: {int(bad.sum())} values are NaN/inf (e.g. {names}); "
                            "fill or drop them before generating")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``FILE[:KEY]`` -> (path, key); a path that itself exists wins (colons in file names)."""
    if Path(spec).exists():
        return Path(spec), None
    if ":" in spec:
        path, key = spec.rsplit(":", 1)
        if Path(path).exists():
            return Path(path), key
    raise MupdError(f"RNA file {spec.rsplit(':', 1)[0] if ':' in spec else spec} does not exist; "
                    "use FILE.h5ad:OBS_NAME, TABLE.csv:SLIDE_ID or a gene<TAB>value FILE.tsv")


def read_rna(spec: str) -> RnaProfile:
    """Parse an RNA spec (see the module docstring) into a raw profile."""
    path, key = split_spec(spec)
    name = path.name.lower()
    if name.endswith(".h5ad"):
        return _read_h5ad(path, key)
    return _read_table(path, key)


def _read_h5ad(path: Path, key: str | None) -> RnaProfile:
    import anndata

    try:
        adata = anndata.read_h5ad(path, backed="r")
    except Exception as exc:  # h5py/anndata raise many types for a damaged file
        raise MupdError(f"{path} could not be read as AnnData ({exc}); is it a valid .h5ad file?") from None
    try:
        names = list(map(str, adata.obs_names))
        if key is None:
            require(len(names) == 1, f"{path} has {len(names)} observations; pick one with {path}:OBS_NAME "
                                     f"(e.g. {path}:{names[0]})")
            key = names[0]
        if key not in names:
            raise MupdError(f"{path} has no observation '{key}'; first names: {names[:5]}")
        row = adata[names.index(key)].X
        row = row.toarray() if hasattr(row, "toarray") else np.asarray(row)
        genes = list(map(str, adata.var_names))
        normalised = dict(adata.uns.get("mupd_impute", {})).get("values")  # mupd impute writes log1p-CPM
    finally:
        if getattr(adata, "file", None) is not None:
            adata.file.close()
    return RnaProfile(np.asarray(row, dtype=np.float32).reshape(-1), genes, f"{path}:{key}",
                      None if normalised is None else str(normalised))


def _read_table(path: Path, key: str | None):
    import pandas as pd

    name = path.name.lower()
    sep = "\t" if any(name.endswith(s) for s in (".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
    try:
        table = pd.read_csv(path, sep=sep, low_memory=False)
    except Exception as exc:
        raise MupdError(f"{path} could not be read as a {'TSV' if sep == chr(9) else 'CSV'} table ({exc})") from None
    require(len(table.columns) >= 2 and len(table) >= 1, f"{path} has no data rows or fewer than two columns")
    rnaseq = [c for c in table.columns if str(c).endswith("_rnaseq")]
    if rnaseq:  # TCGA-style: one row per slide, <GENE>_rnaseq columns
        id_cols = [c for c in ("slide_id", "case_id") if c in table.columns]
        require(key is not None, f"{path} is a per-slide table; pick a row with {path}:SLIDE_ID "
                                 f"(e.g. {path}:{table[id_cols[0]].iloc[0] if id_cols else 0})")
        for col in id_cols:
            hit = table.index[table[col].astype(str) == key]
            if len(hit):
                row = table.loc[hit[0], rnaseq]
                return RnaProfile(pd.to_numeric(row, errors="coerce").to_numpy(np.float32),
                                  [c[: -len("_rnaseq")] for c in rnaseq], f"{path}:{key}")
        raise MupdError(f"{path} has no row with {' or '.join(id_cols) or 'slide_id'} = '{key}'")
    if key is None and table.shape[1] == 2:  # gene -> value
        if _is_number(table.columns[1]):  # no header: the first row was data
            table = pd.read_csv(path, sep=sep, header=None)
        genes = table.iloc[:, 0].astype(str).tolist()
        values = pd.to_numeric(table.iloc[:, 1], errors="coerce").to_numpy(np.float32)
        return RnaProfile(values, genes, str(path))
    # samples x genes table keyed by the first column (e.g. spot ids)
    index = table.iloc[:, 0].astype(str)
    require(key is not None, f"{path} has {len(table)} rows; pick one with {path}:ROW_ID (e.g. {path}:{index.iloc[0]})")
    hit = table.index[index == key]
    require(len(hit) > 0, f"{path} has no row '{key}' in its first column; first ids: {index.head(5).tolist()}")
    row = table.iloc[hit[0], 1:]
    return RnaProfile(pd.to_numeric(row, errors="coerce").to_numpy(np.float32),
                      [str(c) for c in table.columns[1:]], f"{path}:{key}")


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


@dataclass
class GeneMatch:
    """How a user's genes met the model's vocabulary."""

    matched: int
    vocabulary_size: int
    unknown: list[str] = field(default_factory=list)  # user genes not in the vocabulary
    missing: list[str] = field(default_factory=list)  # vocabulary genes the user did not give

    def summary(self, source: str) -> str:
        parts = [f"RNA {source}: {self.matched}/{self.vocabulary_size} vocabulary genes matched"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {', '.join(self.missing[:5])}; filled by the vocabulary)")
        if self.unknown:
            parts.append(f"{len(self.unknown)} unknown to the model, ignored (e.g. {', '.join(self.unknown[:5])})")
        return "; ".join(parts)


def match_genes(profile: RnaProfile, vocabulary_genes: list[str]) -> GeneMatch:
    """Count overlap; no overlap at all is an error (it is almost always the wrong file or gene ids)."""
    vocab = set(vocabulary_genes)
    given = set(profile.genes)
    matched = len(vocab & given)
    if matched == 0:
        raise MupdError(
            f"RNA {profile.source}: none of its {len(given)} genes (e.g. {profile.genes[:3]}) is in the "
            f"model's gene vocabulary of {len(vocab)} (e.g. {list(vocabulary_genes)[:3]}); use gene "
            "symbols of the same kind as the vocabulary (gene_vocabulary.json in the model folder)"
        )
    return GeneMatch(
        matched,
        len(vocab),
        unknown=[g for g in profile.genes if g not in vocab],
        missing=[g for g in vocabulary_genes if g not in given],
    )


# ------------------------------------------------------------------------------------ batch files
BATCH_FIELDS = ("text", "rna", "ref", "label", "n", "seed", "guidance")


def read_condition_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of conditions from a CSV (header: any of text, rna, ref, label, n, seed, guidance) or JSONL."""
    path = Path(path)
    require(path.exists(), f"batch file {path} does not exist")
    rows: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MupdError(f"{path} line {i} is not JSON ({exc.msg})") from None
            require(isinstance(row, dict), f"{path} line {i} must be a JSON object")
            rows.append(row)
    else:
        import pandas as pd

        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = [{k: v for k, v in r.items() if v != ""} for r in table.to_dict("records")]
    for i, row in enumerate(rows, 1):
        unknown = sorted(set(row) - set(BATCH_FIELDS))
        require(not unknown, f"{path} row {i}: unknown field(s) {unknown}; allowed: {list(BATCH_FIELDS)}")
        for k in ("n", "seed"):
            if k in row:
                try:
                    row[k] = int(row[k])
                except (TypeError, ValueError):
                    raise MupdError(f"{path} row {i}: '{k}' must be an integer, got {row[k]!r}") from None
    require(rows, f"batch file {path} has no rows")
    return rows
