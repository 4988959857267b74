"""The pipeline folder: everything a trained model needs at inference, in one directory.

Layout (diffusers' ``model_index.json`` idea)::

    DIR/model_index.json   format, mupd version, task, condition encoders (registry name + kwargs
                           + optional weights folder), labels/captions, image size, source channels
    DIR/model/             MuPD.save_pretrained: config.json, model.safetensors, ema.safetensors
    DIR/vae/               LatentAutoencoder.save_pretrained (the target domain's autoencoder)
    DIR/source_vae/        optional: the source domain's autoencoder (stain / translate fine-tunes)
    DIR/encoders/<m>/      weights of every condition encoder the folder must carry (see below)
    DIR/gene_vocabulary.json, DIR/pathways.json   optional: the RNA vocabulary and gene sets

Condition encoders travel with the model, so inference sees the tokens training saw:

* an encoder with learned or randomly initialised weights (the RNA token encoders, which start
  from ``torch.randn``) is saved in ``encoders/<m>/`` (its own ``save_pretrained`` folder, or its
  state dict as ``model.safetensors`` rebuilt by registry name + kwargs);
* a frozen *pretrained* encoder (one loaded from a weights path) is referenced, not copied (its
  licence may forbid redistribution): registry name + kwargs + the path;
* every entry records ``weights_sha256`` of the encoder's state dict; loading an encoder whose
  weights differ (other files at the referenced path) is a ``MupdError``, not a silent change;
* every entry records the registry's licence facts for the encoder.

The folder is written atomically; loading never unpickles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import atomic_folder, load_into, read_json, save_tensors, write_json
from .errors import MupdError

FORMAT = "mupd-pipeline"

# modality -> (registry name, kwargs, weights folder or None[, the built encoder module])
# With the module, its weights are saved or checksummed (see the module docstring); without it
# (specs only) a weights folder is copied and a weight-free encoder is rebuilt from name + kwargs.
EncoderSpec = tuple[str, dict, "str | os.PathLike | None"] | tuple[str, dict, "str | os.PathLike | None", torch.nn.Module]


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes), independent of device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def licence_facts(modality: str, name: str) -> dict:
    """The registry's licence facts for an encoder (what a user agrees to by loading the folder)."""
    from .encoders import registry

    try:
        return dict(registry.licence_facts(modality, name))
    except MupdError:  # an encoder registered by a plugin that is not imported here
        return {"name": name, "licence": "unknown (not in this mupd's registry)", "commercial": "check"}


def _strictest(answers: list) -> str:
    order = {"yes": 0, "check": 1, "no": 2}
    return max((a if a in order else "check" for a in answers), key=order.__getitem__, default="yes")


def _jsonable(kwargs: dict) -> dict:
    out = {}
    for key, value in kwargs.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = repr(value)[:200]
    return out


def _save_encoder(tmp: Path, modality: str, spec: tuple) -> dict:
    name, kwargs, weights = spec[:3]
    module = spec[3] if len(spec) > 3 else None
    rel = f"encoders/{modality}"
    entry = {"name": name, "kwargs": _jsonable(dict(kwargs)), "path": None, "licence": licence_facts(modality, name)}
    if module is None:  # specs only: copy a weights folder, else rebuild from name + kwargs
        if weights is not None:
            shutil.copytree(weights, tmp / rel)
            entry["path"] = rel
        return entry
    entry["weights_sha256"] = weights_sha256(module)
    if weights is not None:  # frozen pretrained weights: a reference, checked by checksum at load
        text = os.fspath(weights)
        entry["reference"] = text if text.startswith("hf-hub:") else str(Path(text).resolve())
    elif hasattr(module, "save_pretrained"):
        module.save_pretrained(tmp / rel)
        entry["path"] = rel
    elif module.state_dict():
        (tmp / rel).mkdir(parents=True, exist_ok=True)
        save_tensors(tmp / rel / "model.safetensors", module.state_dict())
        entry["state"] = f"{rel}/model.safetensors"
    return entry


def _load_encoder(folder: Path, modality: str, spec: dict):
    from .encoders import registry

    kwargs = dict(spec.get("kwargs", {}))
    if spec.get("path"):
        kwargs["path"] = folder / spec["path"]
    elif spec.get("reference"):
        kwargs["path"] = spec["reference"]
    encoder = registry.build(modality, spec["name"], **kwargs)
    if spec.get("state"):
        load_into(encoder, folder / spec["state"])
    expected = spec.get("weights_sha256")
    if not (expected or "path" in kwargs) and encoder.state_dict():
        raise MupdError(
            f"{folder / 'model_index.json'}: the {modality} encoder '{spec['name']}' has weights but the folder holds none "
            "(written by an older mupd, or save_bundle got no encoder module): a rebuilt encoder would be a different "
            f"random one. Re-save with save_bundle(..., encoders={{'{modality}': (name, kwargs, None, encoder)}}) or retrain"
        )
    if expected and weights_sha256(encoder) != expected:
        where = spec.get("reference") or spec.get("path") or spec.get("state") or "name + kwargs"
        fix = (f"point encoders.{modality}.reference at the original weights" if spec.get("reference")
               else f"restore {where} from the training checkpoint")
        raise MupdError(
            f"{folder / 'model_index.json'}: the {modality} encoder '{spec['name']}' built from {where} has other weights "
            f"than the model was trained with (sha256 {weights_sha256(encoder)[:12]} != {expected[:12]}); {fix}"
        )
    return encoder


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
        index_encoders = {modality: _save_encoder(tmp, modality, spec) for modality, spec in encoders.items()}
        if vocabulary is not None:
            vocabulary.save(tmp / "gene_vocabulary.json")
        if pathways is not None:
            pathways.save(tmp / "pathways.json")
        index = {
            "format": FORMAT,
            "mupd_version": __version__,
            "task": "generate",
            "encoders": index_encoders,
            # the strictest commercial-use answer over the encoders ("no" > "check" > "yes")
            "licence": {"commercial": _strictest([e["licence"].get("commercial") for e in index_encoders.values()])},
            "source_vae": source_vae is not None,
            **(extra or {}),
        }
        write_json(tmp / "model_index.json", index)
    return path


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True) -> Bundle:
    """Load a pipeline folder written by :func:`save_bundle` (or by ``mupd train`` / ``mupd demo``)."""
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
    encoders = {modality: _load_encoder(path, modality, spec) for modality, spec in index.get("encoders", {}).items()}
    vocabulary = pathways = None
    if (path / "gene_vocabulary.json").exists():
        from .data.expression import GeneVocabulary

        vocabulary = GeneVocabulary.load(path / "gene_vocabulary.json")
    if (path / "pathways.json").exists():
        from .data.pathways import PathwayScorer

        pathways = PathwayScorer.load(path / "pathways.json")
    return Bundle(path, index, model, vae, source_vae, encoders, vocabulary, pathways)
