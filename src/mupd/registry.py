"""A named registry that records where each entry comes from and whether it may be used commercially.

Used for encoders, feature extractors and anything else selected by name. Each entry states, once:

- ``licence``: the licence of what mupd loads or ships for it (weights, or our code when weight-free);
- ``base``: the licence of the base model and/or data those weights derive from;
- ``commercial``: ``"yes"``, ``"no"`` or ``"check"`` (read the terms: mixed, research-only data,
  copyleft, or depends on what you load).

``mupd info``, the README table and pipeline folders' metadata all print ``Entry.licence_facts()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MupdError


COMMERCIAL_VALUES = ("yes", "no", "check")


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    licence: str
    commercial: str  # "yes" | "no" | "check"
    source: str = ""
    meta: dict = field(default_factory=dict)
    base: str = "none"

    def licence_facts(self) -> dict:
        """The licence facts as one JSON-ready dict (for ``mupd info``, the README, model_index.json)."""
        return {"name": self.name, "licence": self.licence, "base": self.base, "commercial": self.commercial,
                "source": self.source}


def commercial_value(value) -> str:
    """``True``/``False`` (older registrations) or ``yes``/``no``/``check``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value not in COMMERCIAL_VALUES:
        raise MupdError(f"commercial must be one of {COMMERCIAL_VALUES}, not {value!r}")
    return value


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, licence: str, commercial, source: str = "", base: str = "none", **meta):
        """Decorator: ``@registry.register("uni", licence="CC-BY-NC-ND-4.0", base="...", commercial="no")``."""
        commercial = commercial_value(commercial)

        def wrap(factory):
            if name in self._entries:
                raise MupdError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, licence, commercial, source, dict(meta), base)
            return factory

        return wrap

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise MupdError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._entries[name]

    def build(self, name: str, *args, **kwargs):
        return self.entry(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
