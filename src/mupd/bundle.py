"""The pipeline folder: everything a trained model needs at inference, in one directory.

Layout (diffusers' ``model_index.json`` idea)::

    DIR/model_index.json   format, mupd version, task, condition encoders (registry name + kwargs
                           + optional weights folder), labels/captions, image size, source channels
    DIR/model/             MuPD.save_pretrained: config.json, model.safetensors, ema.safetensors
    DIR/vae/               LatentAutoencoder.save_pretrained (the target domain's autoencoder)
    DIR/source_vae/        optional: the source domain's autoencoder (stain / translate fine-tunes)
    DIR/encoders/<m>/      optional: weights of a condition encoder that needs them
    DIR/gene_vocabulary.json, DIR/pathways.json   optional: the RNA vocabulary and gene sets

The folder is written atomically; loading never unpickles.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import atomic_folder, read_json, write_json
from .errors import MupdError

FORMAT = "mupd-pipeline"

# modality -> (registry name, kwargs, weights folder or None)
EncoderSpec = tuple[str, dict, "str | os.PathLike | None"]


@dataclass
class Bundle:
    path: Path
    index: dict
    model: torch.nn.Module
    vae: Any
    source_vae: Any = None
    encoders: dict = field(default_factory=dict)
    vocabulary: Any = None
    pathways: Any = None


def save_bundle(
    path: str | os.PathLike,
    *,
    model,
    vae,
    ema: torch.nn.Module | None = None,
    source_vae=None,
    encoders: dict[str, EncoderSpec] | None = None,
    vocabulary=None,
    pathways=None,
    extra: dict | None = None,
) -> Path:
    """Write a pipeline folder at ``path`` (replacing any previous one atomically)."""
    path = Path(path)
    encoders = encoders or {}
    for modality in encoders:
        if modality not in model.config.modalities:
            raise MupdError(
                f"encoder given for modality '{modality}', but the model has streams for "
                f"{list(model.config.modalities)} only"
            )
    with atomic_folder(path) as tmp:
        model.save_pretrained(tmp / "model", ema=ema)
        vae.save_pretrained(tmp / "vae")
        if source_vae is not None:
            source_vae.save_pretrained(tmp / "source_vae")
        index_encoders = {}
        for modality, (name, kwargs, weights) in encoders.items():
            rel = None
            if weights is not None:
                rel = f"encoders/{modality}"
                shutil.copytree(weights, tmp / rel)
            index_encoders[modality] = {"name": name, "kwargs": dict(kwargs), "path": rel}
        if vocabulary is not None:
            vocabulary.save(tmp / "gene_vocabulary.json")
        if pathways is not None:
            pathways.save(tmp / "pathways.json")
        index = {
            "format": FORMAT,
            "mupd_version": __version__,
            "task": "generate",
            "encoders": index_encoders,
            "source_vae": source_vae is not None,
            **(extra or {}),
        }
        write_json(tmp / "model_index.json", index)
    return path


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> Bundle:
    """Load a pipeline folder written by :func:`save_bundle` (or by ``mupd train`` / ``mupd demo``)."""
    from .encoders import registry
    from .encoders.vae import LatentAutoencoder
    from .models.mupd import MuPD

    path = Path(path)
    if not path.is_dir():
        raise MupdError(f"{path} is not a folder; pass the pipeline folder written by 'mupd train' or 'mupd demo'")
    index = read_json(path / "model_index.json")
    if index.get("format") != FORMAT:
        raise MupdError(f"{path / 'model_index.json'} is not a mupd pipeline index (format={index.get('format')!r})")
    model = MuPD.from_pretrained(path / "model", use_ema=use_ema, device=device).eval()
    vae = LatentAutoencoder.from_pretrained(path / "vae", device=device)
    source_vae = LatentAutoencoder.from_pretrained(path / "source_vae", device=device) if index.get("source_vae") else None
    encoders = {}
    for modality, spec in index.get("encoders", {}).items():
        kwargs = dict(spec.get("kwargs", {}))
        if spec.get("path"):
            kwargs["path"] = path / spec["path"]
        encoders[modality] = registry.build(modality, spec["name"], **kwargs)
    vocabulary = pathways = None
    if (path / "gene_vocabulary.json").exists():
        from .data.expression import GeneVocabulary

        vocabulary = GeneVocabulary.load(path / "gene_vocabulary.json")
    if (path / "pathways.json").exists():
        from .data.pathways import PathwayScorer

        pathways = PathwayScorer.load(path / "pathways.json")
    return Bundle(path, index, model, vae, source_vae, encoders, vocabulary, pathways)
