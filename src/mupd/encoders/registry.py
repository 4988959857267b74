"""Build condition encoders by modality and name; list them with licence and commercial-use flag.

    from mupd.encoders import registry
    enc = registry.build("text", "hashed-words", width=64)
    tokens, mask = enc.encode(["a patch of tumour"])

Adapters register themselves when their module is imported; importing them is cheap (the heavy
libraries — transformers, timm — load only when an adapter is built).
"""

from __future__ import annotations

import dataclasses
import importlib

from ..errors import MupdError
from ..registry import Entry
from .base import MODALITIES, REGISTRIES, ConditionEncoder

_ADAPTER_MODULES = ("hashed", "text", "image", "rna", "foundation", "aligned")
for _module in _ADAPTER_MODULES:
    try:
        importlib.import_module(f"{__package__}.{_module}")
    except ModuleNotFoundError as exc:  # an adapter file not written yet
        if exc.name != f"{__package__}.{_module}":
            raise


def _registry(modality: str):
    if modality not in REGISTRIES:
        raise MupdError(f"unknown modality '{modality}'; choose one of {', '.join(MODALITIES)}")
    return REGISTRIES[modality]


def build(modality: str, name: str, **kwargs) -> ConditionEncoder:
    """Build the encoder registered as ``name`` for ``modality`` (kwargs go to its factory)."""
    encoder = _registry(modality).build(name, **kwargs)
    encoder.registry_name = name
    return encoder


def entry(modality: str, name: str) -> Entry:
    return _registry(modality).entry(name)


def names(modality: str) -> list[str]:
    return _registry(modality).names()


def all_entries() -> list[Entry]:
    """Every registered encoder, named ``modality/name`` (e.g. ``image/uni``), sorted."""
    out = []
    for modality in MODALITIES:
        for item in REGISTRIES[modality].entries():
            out.append(dataclasses.replace(item, name=f"{modality}/{item.name}"))
    return out
