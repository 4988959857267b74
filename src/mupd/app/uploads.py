"""Every upload is checked here, before a job is queued: size, pixels, mode, RNA file/row/genes.

Nothing the page sends is used as a server path: images stay in memory; an RNA file (the readers
need a file) goes to a private temporary folder under a generated name and is deleted once read.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import MupdError, require
from ..pipelines.inputs import RnaProfile, load_image, match_genes, read_rna

RNA_SUFFIXES = (".h5ad", ".tsv", ".txt", ".csv", ".tsv.gz", ".csv.gz")


@dataclass(frozen=True)
class Limits:
    max_upload_mb: float = 20.0  # one request's body
    max_pixels: int = 2048 * 2048  # one uploaded image (width x height)
    max_n: int = 8  # images per generate job
    max_steps: int = 200

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def check_size(data: bytes, name: str, limits: Limits) -> None:
    require(len(data) <= limits.max_bytes,
            f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to {limits.max_upload_mb:g} MB "
            "(start the server with --max-upload-mb to change it)")


def read_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """Upload bytes -> RGB PIL image; the size is checked from the header, before pixels are decoded."""
    check_size(data, name, limits)
    what = f"uploaded image '{name}'"
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise MupdError(f"{what} is not a readable image; the file is corrupt or not an image (PNG, JPEG, TIFF)") from None
    width, height = im.size
    require(width * height <= limits.max_pixels,
            f"{what} is {width}x{height} px; images are limited to {limits.max_pixels:,} pixels "
            "(crop a region, or start the server with --max-pixels)")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise MupdError(f"{what} could not be decoded ({exc}); the file is truncated or corrupt") from None
    bands = len(im.getbands())
    require(im.mode in ("RGB", "RGBA"),
            f"{what} has {bands} channel{'s' if bands != 1 else ''} (mode {im.mode}); an RGB stain image "
            "(3 channels) is expected")
    return load_image(im, what=what)


def rna_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(RNA_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    raise MupdError(f"RNA file '{name}' must be .h5ad (AnnData) or a gene table (.tsv/.csv, optionally .gz)")


def read_rna_upload(data: bytes, name: str, row: str | None, limits: Limits) -> RnaProfile:
    """An uploaded RNA file (+ the picked row) -> a profile whose source names the upload, not a path."""
    check_size(data, name, limits)
    suffix = rna_suffix(name)
    row = (row or "").strip() or None
    with tempfile.TemporaryDirectory(prefix="mupd-serve-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            profile = read_rna(f"{path}:{row}" if row else str(path))
        except MupdError as exc:
            raise MupdError(str(exc).replace(str(path), f"'{name}'")) from None
    profile.source = f"{name}:{row}" if row else name
    return profile


def rna_rows(data: bytes, name: str, limits: Limits, first: int = 500) -> list[str]:
    """Row names of an uploaded RNA file (the page's row picker); [] for a gene -> value table."""
    check_size(data, name, limits)
    suffix = rna_suffix(name)
    with tempfile.TemporaryDirectory(prefix="mupd-serve-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            rows = _row_names(path, suffix)
        except MupdError:
            raise
        except Exception as exc:  # h5py/pandas raise many types for a damaged file
            raise MupdError(f"RNA file '{name}' could not be read ({type(exc).__name__}); is it a valid "
                            f"{'AnnData file' if suffix == '.h5ad' else 'table'}?") from None
    return [str(r) for r in rows[:first]]


def _row_names(path: Path, suffix: str) -> list:
    if suffix == ".h5ad":
        from ..pipelines.preflight import _h5ad_names

        return _h5ad_names(path)[0]
    import pandas as pd

    sep = "\t" if suffix.startswith((".tsv", ".txt")) else ","
    header = list(pd.read_csv(path, sep=sep, nrows=0).columns)
    if any(str(c).endswith("_rnaseq") for c in header):  # TCGA-style: rows keyed by slide_id / case_id
        key = next((c for c in ("slide_id", "case_id") if c in header), header[0])
        return pd.read_csv(path, sep=sep, usecols=[key])[key].astype(str).tolist()
    if len(header) == 2:  # gene -> value
        return []
    return pd.read_csv(path, sep=sep, usecols=[0]).iloc[:, 0].astype(str).tolist()


_GENE_VALUE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*[=:\s]\s*(-?[0-9.eE+\-]+)\s*$")


def parse_gene_values(text: str) -> RnaProfile:
    """``"ERBB2=8.1, ESR1=2"`` (commas or new lines) -> a profile of those genes."""
    genes, values = [], []
    for item in re.split(r"[,;\n]+", text):
        if not item.strip():
            continue
        hit = _GENE_VALUE.match(item)
        require(hit is not None, f"gene values: {item.strip()!r} not understood; write GENE=VALUE, e.g. ERBB2=8.1")
        try:
            values.append(float(hit.group(2)))
        except ValueError:
            raise MupdError(f"gene values: {hit.group(2)!r} for {hit.group(1)} is not a number") from None
        genes.append(hit.group(1))
    require(genes, "gene values: none given; write GENE=VALUE pairs, e.g. ERBB2=8.1, ESR1=2")
    return RnaProfile(values, genes, "gene values typed on the page")


def check_genes(profile: RnaProfile, vocabulary) -> str:
    """The RNA must share genes with the model's vocabulary; returns the match summary."""
    require(vocabulary is not None, "this model has no gene vocabulary, so named genes cannot be used")
    return match_genes(profile, list(vocabulary.genes)).summary(profile.source)


def safe_name(name: str | None) -> str:
    """An upload's file name for messages only (never opened): its last part, printable, short."""
    base = os.path.basename((name or "upload").replace("\\", "/"))
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", base)[:80] or "upload"
