"""The one record shape every data source returns, and CSV/Parquet manifests of records.

A ``Record`` is one training example: an image (a path, or an in-memory PIL image / uint8 array),
optionally a label, a caption, an expression vector with its gene names, a paired source image
(stain translation) and free metadata. Every loader in ``mupd.data`` returns ``list[Record]``.

A manifest is a table with one row per record: ``id``, ``path`` (relative to the manifest's
folder or absolute) and any of ``label``, ``caption``, ``source_path`` plus free columns (kept in
``meta``). Expression vectors do not fit a table; ``write_manifest`` puts them in a companion
``<manifest stem>.expression.npz`` (``ids``, ``genes``, ``values``; no pickles) that
``read_manifest`` picks up again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import MupdError, require

log = logging.getLogger("mupd.data")

RESERVED_COLUMNS = ("id", "path", "label", "caption", "source_path")


@dataclass
class Record:
    id: str
    image: Any = None  # str | Path | PIL.Image.Image | np.ndarray (H, W, 3) uint8 | None
    label: int | str | None = None
    caption: str | None = None
    expression: np.ndarray | None = None  # (G,) float, aligned with ``genes``
    genes: list[str] | None = None
    meta: dict = field(default_factory=dict)
    source_image: Any = None  # paired source-domain image (stain / translate), same types as image

    def __post_init__(self):
        self.id = str(self.id)
        if self.expression is not None:
            self.expression = np.asarray(self.expression, dtype=np.float32).reshape(-1)
            require(self.genes is not None and len(self.genes) == self.expression.shape[0],
                    f"record {self.id!r}: expression has {self.expression.shape[0]} values but "
                    f"{0 if self.genes is None else len(self.genes)} gene names; pass genes= of the same length")


def check_unique_ids(records: Sequence[Record], where: str = "records") -> None:
    """Duplicate ids would silently merge examples in shards and joins: refuse them."""
    seen: set[str] = set()
    dups: list[str] = []
    for r in records:
        if r.id in seen:
            dups.append(r.id)
        seen.add(r.id)
    if dups:
        raise MupdError(f"{where}: {len(dups)} duplicate ids, first {dups[:5]}; ids must be unique "
                        "(prefix them with the slide/section or drop the repeated rows)")


def _read_table(path: Path):
    import pandas as pd

    if not path.exists():
        raise MupdError(f"manifest {path} does not exist; create one with `mupd data index SRC --out {path}`")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            try:
                return pd.read_parquet(path)
            except ImportError:
                from ..errors import missing_extra

                raise missing_extra("pyarrow", "parquet", f"reading {path}") from None
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        return pd.read_csv(path, sep=sep, dtype={c: str for c in ("id", "path", "caption", "source_path")})
    except MupdError:
        raise
    except Exception as exc:  # pandas raises many types for a damaged table
        raise MupdError(f"manifest {path} could not be read as a table ({type(exc).__name__}: {exc})") from None


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> list[Record]:
    """Read a CSV/TSV/Parquet manifest: ``path`` column required, ``id`` defaults to the path stem."""
    path = Path(path)
    table = _read_table(path)
    require("path" in table.columns, f"manifest {path} has no 'path' column (columns: {list(table.columns)[:10]}); "
            "add one with the image file of each row")
    require(len(table) > 0, f"manifest {path} has no rows")
    base = path.parent
    records: list[Record] = []
    missing: list[str] = []
    for i, row in enumerate(table.to_dict("records")):
        image = _resolve(base, row["path"])
        rid = str(row["id"]) if "id" in row and _present(row["id"]) else Path(str(row["path"])).with_suffix("").as_posix()
        source = _resolve(base, row["source_path"]) if _present(row.get("source_path")) else None
        for p in (image, source):
            if check_files and p is not None and not p.exists():
                missing.append(f"{rid} ({p})")
        label = row.get("label")
        label = None if not _present(label) else (int(label) if _is_int(label) else str(label))
        caption = row.get("caption")
        meta = {k: _plain(v) for k, v in row.items() if k not in RESERVED_COLUMNS}
        records.append(Record(rid, image, label, str(caption) if _present(caption) else None, meta=meta, source_image=source))
    if missing:
        raise MupdError(f"manifest {path}: {len(missing)} image files do not exist, first {missing[:3]}; "
                        "fix the paths (relative paths are relative to the manifest's folder)")
    check_unique_ids(records, f"manifest {path}")
    _attach_expression(path, records)
    return records


def write_manifest(records: Sequence[Record], path: str | os.PathLike, *, image_dir: str | os.PathLike | None = None) -> Path:
    """Write records as a manifest (CSV, or Parquet by suffix). In-memory images (tiles, spot crops)
    are saved as PNG under ``image_dir`` (default ``<manifest folder>/<manifest stem>_images``, beside
    the manifest, so two manifests in one folder never mix their crops)."""
    import pandas as pd

    from ..checkpoint import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_unique_ids(records, "write_manifest")
    image_dir = Path(image_dir) if image_dir else manifest_image_dir(path)
    rows = []
    for r in records:
        row = {"id": r.id, "path": _store_image(r.image, r.id, image_dir, path.parent, "")}
        if r.label is not None:
            row["label"] = r.label
        if r.caption is not None:
            row["caption"] = r.caption
        if r.source_image is not None:
            row["source_path"] = _store_image(r.source_image, r.id, image_dir, path.parent, ".source")
        row.update({k: v for k, v in r.meta.items() if k not in RESERVED_COLUMNS and _scalar(v)})
        rows.append(row)
    table = pd.DataFrame(rows)
    if path.suffix.lower() in (".parquet", ".pq"):
        tmp = path.with_name(f".{path.name}.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    else:
        atomic_write_text(path, table.to_csv(index=False, sep="\t" if path.suffix.lower() == ".tsv" else ","))
    with_expr = [r for r in records if r.expression is not None]
    if with_expr:
        genes = with_expr[0].genes
        require(all(list(r.genes) == list(genes) for r in with_expr),
                "write_manifest: records carry expression over different gene lists; map them through "
                "one GeneVocabulary first")
        tmp = path.with_name(f".{path.stem}.expression.tmp.npz")
        np.savez(tmp, ids=np.array([r.id for r in with_expr]), genes=np.array(list(genes)),
                 values=np.stack([r.expression for r in with_expr]).astype(np.float32))
        os.replace(tmp, expression_companion(path))
    return path


def manifest_image_dir(manifest: Path) -> Path:
    """Where ``write_manifest`` saves in-memory images (spot crops, tiles) by default."""
    return manifest.with_name(f"{manifest.stem}_images")


def expression_companion(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}.expression.npz")


def _attach_expression(path: Path, records: list[Record]) -> None:
    companion = expression_companion(path)
    if not companion.exists():
        return
    try:
        data = np.load(companion, allow_pickle=False)
        ids, genes, values = data["ids"], data["genes"], data["values"]
    except Exception as exc:
        raise MupdError(f"{companion} could not be read ({exc}); re-write the manifest") from None
    by_id = {str(i): k for k, i in enumerate(ids)}
    genes = [str(g) for g in genes]
    for r in records:
        k = by_id.get(r.id)
        if k is not None:
            r.expression, r.genes = values[k].astype(np.float32), genes


def _store_image(image: Any, rid: str, image_dir: Path, base: Path, suffix: str) -> str | None:
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        p = Path(image).absolute()  # a relative path means from here, not from the manifest's folder
        # relative when inside the manifest's folder (the dataset can move), absolute otherwise
        rel = os.path.relpath(p, base.absolute())
        return p.as_posix() if rel.startswith("..") else rel
    from PIL import Image

    image_dir.mkdir(parents=True, exist_ok=True)
    target = image_dir / (safe_filename(rid) + suffix + ".png")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    pil.save(target)
    return os.path.relpath(target, base)


def safe_filename(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _resolve(base: Path, value) -> Path:
    p = Path(str(value))
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def _present(value) -> bool:
    if value is None:
        return False
    try:
        return not (isinstance(value, float) and np.isnan(value))
    except TypeError:
        return True


def _is_int(value) -> bool:
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.lstrip("-").isdigit()


def _scalar(v) -> bool:
    return isinstance(v, (str, int, float, bool, np.integer, np.floating)) or v is None


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def sample_per_class(records: Sequence[Record], per_class: int | None, seed: int = 0) -> list[Record]:
    """At most ``per_class`` records of each label (unlabelled records count as one class), drawn
    with a seeded permutation per class and returned in their original order: a quick run sees every
    class in proportion, not the first rows of a sorted table (which are often all one class)."""
    if per_class is None:
        return list(records)
    require(per_class >= 1, f"--limit must be at least 1, not {per_class}")
    groups: dict = {}
    for index, r in enumerate(records):
        groups.setdefault(str(r.label), []).append(index)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for label in sorted(groups):
        indices = groups[label]
        keep += [indices[i] for i in rng.permutation(len(indices))[:per_class]]
    return [records[i] for i in sorted(keep)]


def find_unreadable(records: Sequence[Record], *, progress: bool = False) -> list[str]:
    """``"id (path): reason"`` for every record whose image (or paired source) file cannot be decoded:
    missing, not an image, or truncated. Decodes each file fully (a truncated PNG has a valid header)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    items = [(r.id, p) for r in records for p in (r.image, r.source_image) if isinstance(p, (str, os.PathLike))]
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="checking images", unit="img")
    for rid, path in items:
        try:
            with Image.open(path) as im:
                im.load()
        except (OSError, SyntaxError, UnidentifiedImageError, ValueError) as exc:
            bad.append(f"{rid} ({path}): {str(exc)[:80]}")
    return bad


def records_summary(records: Iterable[Record]) -> dict:
    records = list(records)
    labels = [r.label for r in records if r.label is not None]
    return {
        "n": len(records),
        "labelled": len(labels),
        "classes": sorted({str(x) for x in labels}),
        "captioned": sum(r.caption is not None for r in records),
        "with_expression": sum(r.expression is not None for r in records),
        "paired": sum(r.source_image is not None for r in records),
    }
