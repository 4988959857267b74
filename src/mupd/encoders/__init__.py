"""Condition encoders (text, image, RNA) selected by name, and the latent autoencoder (``vae``).

``from mupd.encoders import registry`` then ``registry.build(modality, name, **kw)``.
Submodules load lazily so importing ``mupd.encoders`` stays cheap.
"""

from __future__ import annotations

import importlib

__all__ = ["registry", "ConditionEncoder"]


def __getattr__(name):
    if name == "registry":
        return importlib.import_module(f"{__name__}.registry")
    if name == "ConditionEncoder":
        from .base import ConditionEncoder

        return ConditionEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
