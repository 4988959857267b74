"""User conditions -> the model's token streams, and checks of guidance and per-modality scales.

Functions of a loaded pipeline (``pipe``: anything with the attributes of ``base.PipelineBase``),
so the task modules share them without importing each other.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import require
from .inputs import RnaProfile, image_to_uint8, load_image, match_genes, read_rna
from .pngmeta import sha256_of


def encode_conditions(
    pipe,
    n: int,
    *,
    text: str | Sequence[str] | None = None,
    rna: Any = None,
    image: Any = None,
    label: Any = None,
) -> tuple[dict, list[dict], list[str]]:
    """User conditions -> (model conditions {modality: (tokens, mask)}, per-sample records, notes).

    Each argument is one value (shared by all ``n`` samples) or a list of ``n`` values.
    ``label`` looks up the caption stored with the model (``labels`` in model_index.json).
    """
    records = [dict() for _ in range(n)]
    notes: list[str] = []
    conditions: dict = {}
    if label is not None:
        require(text is None, "give either label= or text=, not both (a label is turned into its caption)")
        labels = pipe.labels
        require(labels, f"this model has no label captions in {pipe.path}/model_index.json; pass text= instead")
        chosen = _per_sample(label, n, "label")
        for i, lab in enumerate(chosen):
            require(str(lab) in labels, f"label {lab!r} is not one of the model's labels {sorted(labels)}")
            records[i]["label"] = str(lab)
        text = [labels[str(lab)] for lab in chosen]
    if text is not None:
        texts = _per_sample(text, n, "text")
        require(all(isinstance(t, str) for t in texts), "text must be a string or a list of strings")
        encoder = encoder_for(pipe, "text")
        conditions["text"] = _expand(encoder.encode(_unique(texts)), texts)
        for rec, t in zip(records, texts):
            rec["text"] = t
    if rna is not None:
        profiles = _per_sample(rna, n, "rna")
        vectors, sources = [], []
        for p in _unique(profiles, key=id):
            vec, source, note = rna_vector(pipe, p)
            vectors.append(vec)
            sources.append(source)
            if note:
                notes.append(note)
        batch = torch.from_numpy(np.stack(vectors)).to(pipe.device)
        # a "vector modality" (e.g. 331 pathway scores) is tokenised inside the model itself
        tokens = batch if rna_is_vector(pipe) else encoder_for(pipe, "rna").encode(batch)
        order = {id(p): i for i, p in enumerate(_unique(profiles, key=id))}
        conditions["rna"] = _index(tokens, [order[id(p)] for p in profiles])
        for rec, p in zip(records, profiles):
            i = order[id(p)]
            rec["rna"] = {"source": sources[i], "sha256": sha256_of(vectors[i])[:16]}
    if image is not None:
        refs = _per_sample(image, n, "image")
        loaded = [load_image(r, what="reference image") for r in _unique(refs, key=id)]
        order = {id(r): i for i, r in enumerate(_unique(refs, key=id))}
        encoder = encoder_for(pipe, "image")
        sizes = {im.size for im in loaded}
        if len(sizes) > 1:  # encoders take one size per batch; encode one by one
            parts = [encoder.encode(image_to_uint8([im]).to(pipe.device)) for im in loaded]
            tokens = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        else:
            tokens = encoder.encode(image_to_uint8(loaded).to(pipe.device))
        conditions["image"] = _index(tokens, [order[id(r)] for r in refs])
        for rec, r in zip(records, refs):
            im = loaded[order[id(r)]]
            rec["image"] = {"source": str(r) if isinstance(r, (str, os.PathLike)) else None,
                            "sha256": sha256_of(im)[:16]}
    return conditions, records, notes

def encoder_for(pipe, modality: str):
    require(modality in pipe.modalities,
            f"this model has no '{modality}' condition stream (it has {list(pipe.modalities)}); "
            f"drop the {modality} input or use a model trained with it")
    require(modality in pipe.encoders,
            f"{pipe.path}/model_index.json names no '{modality}' encoder although the model has that stream; "
            "re-save the pipeline with save_bundle(..., encoders={...})")
    return pipe.encoders[modality]

def rna_is_vector(pipe) -> bool:
    return "rna" in (getattr(pipe.config, "vector_modalities", None) or {})

def rna_vector(pipe, rna: Any) -> tuple[np.ndarray, str, str]:
    """One RNA input -> (model-ready vector, source description, gene-match note).

    Accepts an RNA spec string (see ``inputs.read_rna``), an ``RnaProfile``, a ``{gene: value}``
    dict or a pandas Series (mapped through the vocabulary), or an array already in the
    model's vocabulary order.
    """
    require("rna" in pipe.modalities,
            f"this model has no 'rna' condition stream (it has {list(pipe.modalities)}); drop the RNA input")
    if not rna_is_vector(pipe):
        encoder_for(pipe, "rna")
    if isinstance(rna, (str, os.PathLike)):
        rna = read_rna(str(rna))
    elif isinstance(rna, Mapping):
        rna = RnaProfile(np.array(list(rna.values()), dtype=np.float32), [str(g) for g in rna], "the given gene dict")
    elif hasattr(rna, "index") and hasattr(rna, "to_numpy"):  # pandas Series
        rna = RnaProfile(rna.to_numpy(np.float32), [str(g) for g in rna.index], f"series {getattr(rna, 'name', '')}")
    if isinstance(rna, RnaProfile):
        require(pipe.vocabulary is not None,
                f"{pipe.path} has no gene_vocabulary.json, so named genes cannot be mapped; pass a vector instead")
        match = match_genes(rna, list(pipe.vocabulary.genes))
        values, _report = pipe.vocabulary.transform(rna.values[None, :], rna.genes, normalised=rna.normalised)
        values = np.asarray(values, dtype=np.float32)
        if pipe.pathways is not None:
            values = np.asarray(pipe.pathways.score(values, list(pipe.vocabulary.genes)), dtype=np.float32)
        vector, source, note = values[0], rna.source, match.summary(rna.source)
    else:
        vector = np.asarray(rna.detach().cpu() if hasattr(rna, "detach") else rna, dtype=np.float32).reshape(-1)
        source, note = "a given vector", ""
    require(np.isfinite(vector).all(), f"RNA {source}: the mapped vector has NaN/inf values; check the input values")
    if rna_is_vector(pipe):
        width = pipe.config.vector_modalities["rna"]
    else:
        width = getattr(pipe.encoders["rna"], "num_genes", None) or getattr(pipe.encoders["rna"], "input_dim", None)
    if width is not None:
        require(vector.shape[0] == int(width),
                f"RNA {source}: {vector.shape[0]} values but the model's RNA encoder takes {width}; "
                "pass named genes so they are mapped through the model's vocabulary")
    return vector, source, note

def check_guidance(pipe, guidance, conditions: dict):
    """Validate guidance against the model's streams and the conditions actually given."""
    if guidance is None:
        return None
    if isinstance(guidance, (int, float)):
        require(np.isfinite(guidance), f"guidance must be finite, got {guidance}")
        require(conditions, "guidance was given but no condition (text/rna/image/label) was; nothing to guide towards")
        return float(guidance)
    require(isinstance(guidance, Mapping), f"guidance must be a number or {{modality: scale}}, got {type(guidance).__name__}")
    out = {}
    for modality, scale in guidance.items():
        require(modality in pipe.modalities,
                f"guidance for '{modality}', but this model has no {modality} stream (it has {list(pipe.modalities)})")
        require(modality in conditions, f"guidance for '{modality}' but no {modality} condition was given")
        require(isinstance(scale, (int, float)) and np.isfinite(scale), f"guidance scale for '{modality}' must be a number")
        out[modality] = float(scale)
    return out


def check_scales(pipe, scales, conditions: dict):
    """Validate per-modality inference scales lambda_m (``{modality: scale}``; DESIGN section 2).

    lambda_m multiplies stream m's cross-attention output inside every block: 1 is the trained
    model, 0 switches the stream off, > 1 strengthens it. Returns a plain dict, or None."""
    if scales is None or (isinstance(scales, Mapping) and not scales):
        return None
    require(isinstance(scales, Mapping),
            f"scales must be {{modality: scale}} (e.g. {{'rna': 1.5}}), got {type(scales).__name__}")
    out = {}
    for modality, scale in scales.items():
        require(modality in pipe.modalities,
                f"scale for '{modality}', but this model has no {modality} stream (it has {list(pipe.modalities)})")
        require(modality in conditions, f"scale for '{modality}' but no {modality} condition was given; "
                                        "a scale only changes a stream that is present")
        require(isinstance(scale, (int, float)) and np.isfinite(scale) and scale >= 0,
                f"scale for '{modality}' must be a number >= 0 (1 = as trained), got {scale!r}")
        out[str(modality)] = float(scale)
    attention = getattr(pipe.config, "attention", "decoupled")
    require(attention != "shared" or all(v == 1.0 for v in out.values()),
            f"{pipe.path}: per-modality scales need a model with decoupled attention; this one was trained "
            "with attention='shared' (one stream for all modalities)")
    return out


def _per_sample(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        require(len(value) == n, f"{what}: {len(value)} values given for n={n} samples; give one, or exactly n")
        return list(value)
    return [value] * n


def _unique(values: list, key=None) -> list:
    seen, out = set(), []
    for v in values:
        k = key(v) if key else v
        if k not in seen:
            seen.add(k)
            out.append(v)
    return out


def _expand(encoded, texts: list[str]):
    order = {t: i for i, t in enumerate(_unique(texts))}
    return _index(encoded, [order[t] for t in texts])


def _index(encoded, rows: list[int]):
    """Gather rows of an encoder output ((tokens, mask) or tokens)."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    if isinstance(encoded, tuple):
        return tuple(e[idx.to(e.device)] for e in encoded)
    return encoded[idx.to(encoded.device)]
