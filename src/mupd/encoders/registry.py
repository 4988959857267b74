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


def licence_facts(modality: str, name: str) -> dict:
    """One encoder's licence facts: ``{"name", "licence", "base", "commercial" (yes/no/check), "source"}``
    (``mupd.bundle`` writes these into a pipeline folder's metadata)."""
    return entry(modality, name).licence_facts()


def licence_metadata(components: dict[str, str]) -> dict:
    """Licence facts for a pipeline folder's metadata: ``{"text": "hashed-words", "rna": "pathway-tokens"}``
    -> ``{"text": {"name", "licence", "base", "commercial", "source"}, ...}``, plus ``"commercial"``: the
    strictest of the components ("no" > "check" > "yes"). Unknown names raise ``MupdError``."""
    facts = {modality: licence_facts(modality, name) for modality, name in components.items()}
    order = {"yes": 0, "check": 1, "no": 2}
    overall = max((f["commercial"] for f in facts.values()), key=order.__getitem__, default="yes")
    return {"components": facts, "commercial": overall}


def licence_table() -> str:
    """The README's licence table (Markdown), generated from the registry so the two cannot disagree."""
    rows = ["| encoder | licence of the weights / code | derived from (base model, data) | commercial use |",
            "|---|---|---|---|"]
    for item in all_entries():
        rows.append(f"| `{item.name}` | {item.licence} | {item.base} | {item.commercial} |")
    return "\n".join(rows)
