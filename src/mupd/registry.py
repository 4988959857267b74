"""A named registry that records where each entry comes from and whether it may be used commercially.

Used for encoders, feature extractors and anything else selected by name. ``licence`` and
``commercial`` are shown by ``mupd info`` and in the README table, so a user knows what they
are agreeing to before loading weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MupdError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    licence: str
    commercial: bool
    source: str = ""
    meta: dict = field(default_factory=dict)


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, licence: str, commercial: bool, source: str = "", **meta):
        """Decorator: ``@registry.register("uni", licence="CC-BY-NC-ND-4.0", commercial=False)``."""

        def wrap(factory):
            if name in self._entries:
                raise MupdError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = Entry(name, factory, licence, commercial, source, dict(meta))
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
