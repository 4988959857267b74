"""Checks every pipelines command runs before it loads a model (issue: errors in < 2 s, not after 30).

Everything here reads only JSON, image headers/pixels and RNA tables, never torch: the model
folder's ``model_index.json``, ``model/config.json``, ``gene_vocabulary.json`` and autoencoder
``config.json`` say which streams, labels, genes, sizes and channel counts the model has, so a
wrong path, row, gene set, image mode or option is reported before any weight is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import MupdError, require
from .inputs import RnaProfile, load_image, match_genes, read_rna, split_spec
from .options import SAMPLERS
from .sdedit import check_strength



def _json(path: Path, what: str) -> dict:
    require(path.is_file(), f"{path.parent} has no {path.name}; it is not a complete mupd pipeline folder "
                            f"({what} missing; re-save it with save_bundle or 'mupd train')")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MupdError(f"{path} is not readable JSON ({exc}); the pipeline folder is damaged") from None
    require(isinstance(data, dict), f"{path} must hold a JSON object")
    return data


@dataclass
class ModelFacts:
    """What a pipeline folder offers, read from its JSON files only."""

    path: Path
    index: dict
    config: dict
    vocabulary_genes: list[str] | None
    vae_channels: int | None
    source_vae_channels: int | None

    @property
    def modalities(self) -> list[str]:
        return list(self.config.get("modalities") or [])

    @property
    def task(self) -> str:
        return str(self.index.get("task", "generate"))

    @property
    def source_channels(self) -> int:
        return int(self.config.get("extra_in_channels") or 0)

    @property
    def image_size(self) -> int:  # the same rule as PipelineBase.image_size
        return int(self.index.get("image_size") or int(self.config.get("input_size", 0)) * 8)

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.index.get("labels") or {}).items()}

    def has_stream(self, modality: str) -> bool:
        """The model has the stream and something to encode it (an encoder, or a vector tokeniser)."""
        if modality not in self.modalities:
            return False
        return modality in (self.index.get("encoders") or {}) or modality in (self.config.get("vector_modalities") or {})

    def require_stream(self, modality: str, flag: str) -> None:
        require(modality in self.modalities,
                f"{flag}: the model {self.path} has no '{modality}' condition stream (it has {self.modalities}); "
                f"drop {flag} or use a model trained with it")
        require(self.has_stream(modality),
                f"{self.path}/model_index.json names no '{modality}' encoder although the model has that stream; "
                "re-save the pipeline with save_bundle(..., encoders={...})")


def model_facts(path: str | os.PathLike) -> ModelFacts:
    """Read a pipeline folder's facts; a missing or incomplete folder is a one-line error."""
    folder = Path(path)
    require(folder.exists(), f"model folder {folder} does not exist; pass the pipeline folder written by "
                             "'mupd train' or 'mupd demo' (it holds model_index.json)")
    require(folder.is_dir(), f"--model {folder} is a file; pass the pipeline folder that holds model_index.json")
    require((folder / "model_index.json").exists(),
            f"{folder} has no model_index.json; it is not a mupd pipeline folder "
            "(point --model at the folder written by 'mupd train' or 'mupd demo')")
    index = _json(folder / "model_index.json", "the pipeline index")
    require(index.get("format") == "mupd-pipeline",
            f"{folder / 'model_index.json'} is not a mupd pipeline index (format={index.get('format')!r})")
    config = _json(folder / "model" / "config.json", "the model's config")
    for modality, spec in (index.get("encoders") or {}).items():
        reference = str((spec or {}).get("reference") or "")
        require(not reference or reference.startswith("hf-hub:") or Path(reference).exists(),
                f"{folder / 'model_index.json'}: the {modality} encoder's weights at {reference} do not exist; "
                f"restore them or point encoders.{modality}.reference at them")
    genes = None
    if (folder / "gene_vocabulary.json").exists():
        genes = [str(g) for g in _json(folder / "gene_vocabulary.json", "the gene vocabulary").get("genes") or []]
    vae = _json(folder / "vae" / "config.json", "the autoencoder's config").get("in_channels")
    source = None
    if index.get("source_vae"):
        source = _json(folder / "source_vae" / "config.json", "the source autoencoder's config").get("in_channels")
    return ModelFacts(folder, index, config, genes, vae, source if source is not None else None)


# ------------------------------------------------------------------------------------- options
def check_run_options(*, steps: int, sampler: str, seed: int, n: int | None = None, out: str | None = None) -> None:
    if out is not None:
        require(not Path(out).is_file(), f"--out {out} is a file; pass a folder for the images and manifest.csv")
    require(isinstance(steps, int) and steps >= 1, f"--steps must be a positive integer, got {steps}")
    require(sampler in SAMPLERS, f"--sampler must be one of {SAMPLERS}, got {sampler!r}")
    require(seed >= 0, f"--seed must be a non-negative integer, got {seed}")
    if n is not None:
        require(n >= 1, f"--n must be a positive integer, got {n}")


def check_modality_options(facts: ModelFacts, given: Iterable[str], guidance, scales) -> None:
    """--guidance / --scale name streams the model has and conditions the command gives."""
    given = set(given)
    if isinstance(guidance, float):
        require(given, "--guidance was given but no condition (--text/--label/--rna/--ref/--image) is; "
                       "nothing to guide towards")
    for flag, values in (("--guidance", guidance if isinstance(guidance, dict) else {}), ("--scale", scales or {})):
        for modality in values:
            require(modality in facts.modalities,
                    f"{flag} {modality}=...: this model has no {modality} stream (it has {facts.modalities})")
            require(modality in given, f"{flag} {modality}=... but no {modality} condition is given")
    if scales and any(v != 1.0 for v in scales.values()):
        require(facts.config.get("attention", "decoupled") != "shared",
                f"--scale needs a model with decoupled attention; {facts.path} was trained with attention='shared'")


def check_generate_row(facts: ModelFacts, row: dict) -> set[str]:
    """One condition row (CLI flags or a --batch line): labels, streams, RNA file/row/genes, image.
    Returns the modalities it conditions on."""
    at = ""
    given = set()
    require(facts.source_channels == 0 or facts.task == "generate",
            f"{facts.path} is a '{facts.task}' model that needs a source image; use 'mupd {facts.task}'")
    if row.get("label") is not None:
        require(row.get("text") is None, f"{at}give either a label or a text, not both")
        labels = facts.labels
        require(labels, f"{at}the model has no label captions in {facts.path}/model_index.json; use --text instead")
        require(str(row["label"]) in labels, f"{at}label {row['label']!r} is not one of the model's labels {sorted(labels)}")
    if row.get("text") is not None or row.get("label") is not None:
        facts.require_stream("text", f"{at}--text/--label")
        given.add("text")
    if row.get("rna") is not None:
        check_rna(facts, str(row["rna"]), at)
        given.add("rna")
    if row.get("ref") is not None:
        facts.require_stream("image", f"{at}--ref")
        load_image(row["ref"], what=f"{at}reference image")
        given.add("image")
    return given


def check_rna(facts: ModelFacts, spec: str, at: str = "") -> None:
    facts.require_stream("rna", f"{at}--rna")
    require(facts.vocabulary_genes is not None,
            f"{at}{facts.path} has no gene_vocabulary.json, so the named genes of {spec} cannot be mapped "
            "to the model's input")
    match_genes(rna_names(spec), facts.vocabulary_genes)  # file, row and gene overlap


def rna_names(spec: str) -> RnaProfile:
    """The genes of an RNA spec and a check that its row exists, reading names only (no values):
    h5ad obs/var names through h5py, tables through their id column and header. Anything unusual
    falls back to ``read_rna``, which reads and checks everything."""
    path, key = split_spec(spec)
    try:
        if path.name.lower().endswith(".h5ad"):
            rows, genes = _h5ad_names(path)
        else:
            rows, genes = _table_names(path, key)
    except MupdError:
        raise
    except Exception:  # an older or unusual layout: let the full reader judge it
        return read_rna(spec)
    if rows is None:  # a gene -> value table
        return read_rna(spec)
    if key is None:
        require(len(rows) == 1, f"{path} has {len(rows)} rows; pick one with {path}:ROW_ID (e.g. {path}:{rows[0]})")
        key = rows[0]
    require(key in set(rows), f"{path} has no row '{key}'; first ids: {rows[:5]}")
    return RnaProfile(np.zeros(len(genes), dtype=np.float32), genes, f"{path}:{key}")


def _h5ad_names(path: Path) -> tuple[list[str], list[str]]:
    import h5py

    def names(group) -> list[str]:
        values = group[group.attrs["_index"]][:]
        return [v.decode() if isinstance(v, bytes) else str(v) for v in values]

    with h5py.File(path, "r") as handle:
        return names(handle["obs"]), names(handle["var"])


def _table_names(path: Path, key: str | None) -> tuple[list[str] | None, list[str]]:
    """Row ids and gene names of a table, reading lines as text (a spots x 15,000-genes table parses
    in seconds; its first column and header take a fraction of that)."""
    import csv
    import gzip

    name = path.name.lower()
    sep = "\t" if any(name.endswith(s) for s in (".tsv", ".tsv.gz", ".txt", ".txt.gz")) else ","
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        header = next(csv.reader([handle.readline()], delimiter=sep))
        lines = handle.readlines()
    rnaseq = [c for c in header if c.endswith("_rnaseq")]
    if rnaseq:  # TCGA-style: rows keyed by slide_id / case_id
        ids = [header.index(c) for c in ("slide_id", "case_id") if c in header]
        require(ids and key is not None, f"{path} is a per-slide table; pick a row with {path}:SLIDE_ID")
        found = any(key in (cells[i] for i in ids if i < len(cells)) for cells in csv.reader(lines, delimiter=sep))
        require(found, f"{path} has no row with {' or '.join(header[i] for i in ids)} = '{key}'")
        return [key], [c[: -len("_rnaseq")] for c in rnaseq]
    if key is None and len(header) == 2:
        return None, []
    return [line.split(sep, 1)[0].strip('"') for line in lines if line.strip()], header[1:]


def check_source_images(facts: ModelFacts, paths: list[Path]) -> None:
    """stain / translate sources: readable RGB images of >= 8 px, and an autoencoder that takes 3 channels."""
    channels = facts.source_vae_channels if facts.source_channels else facts.vae_channels
    if channels is not None:
        which = "source_vae" if facts.source_channels else "vae"
        require(int(channels) == 3, f"{facts.path}/{which} encodes {channels}-channel images, but source images "
                                    "are RGB; use a folder whose source autoencoder takes RGB")
    for path in paths:
        load_image(path, what="source image")


def check_strength_option(strength: float, sampler: str, steps: int) -> float:
    try:
        return check_strength(strength, sampler, steps)
    except MupdError as exc:
        raise MupdError(f"--strength: {exc}") from None


def given_conditions(facts: ModelFacts, *, text: Any = None, image_stream: bool = False) -> set[str]:
    out = set()
    if text is not None:
        facts.require_stream("text", "--text")
        out.add("text")
    if image_stream:
        out.add("image")
    return out
