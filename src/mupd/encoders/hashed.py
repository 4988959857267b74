"""``hashed-words``: a text encoder with no weights at all.

Each lower-cased word gets a fixed vector derived only from the word's blake2b hash (counter mode,
Box-Muller), so it is identical across processes, machines and library versions — no random
number generator is involved. Good enough for label captions ("a patch of metastatic tumour") when
no pretrained text model is at hand; it knows no synonyms.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np
import torch

from ..errors import require
from .base import ConditionEncoder, check_texts, register

WORD = re.compile(r"[^\W_]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; punctuation dropped)."""
    return WORD.findall(text.lower())


@lru_cache(maxsize=65536)
def word_vector(word: str, width: int) -> np.ndarray:
    """A standard-normal vector of length ``width`` determined by the word alone."""
    needed = 2 * ((width + 1) // 2)  # Box-Muller makes pairs
    raw = bytearray()
    counter = 0
    while len(raw) < 4 * needed:
        raw += hashlib.blake2b(f"{counter}:{word}".encode(), digest_size=64, person=b"mupd-hashwords").digest()
        counter += 1
    ints = np.frombuffer(bytes(raw[: 4 * needed]), dtype="<u4").astype(np.float64)
    uniform = (ints + 0.5) / 2.0**32  # strictly inside (0, 1)
    u1, u2 = uniform[0::2], uniform[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    normal = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    vector = normal[:width].astype(np.float32)
    vector.setflags(write=False)
    return vector


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    position = np.arange(length, dtype=np.float64)[:, None]
    freqs = np.exp(-np.log(10000.0) * np.arange(0, width, 2, dtype=np.float64) / width)
    table = np.zeros((length, width), dtype=np.float64)
    table[:, 0::2] = np.sin(position * freqs)
    table[:, 1::2] = np.cos(position * freqs)[:, : width // 2]
    return table.astype(np.float32)


class HashedWordsEncoder(ConditionEncoder):
    """Frozen per-word vectors; tokens padded to ``max_length`` (fixed shape, easy to cache)."""

    modality = "text"

    def __init__(self, width: int = 64, max_length: int = 32, positions: bool = False, pad_to_max: bool = True):
        super().__init__()
        require(isinstance(width, int) and width > 0, f"hashed-words: width must be a positive int, got {width!r}")
        require(isinstance(max_length, int) and max_length > 0, f"hashed-words: max_length must be a positive int, got {max_length!r}")
        self.width = width
        self.max_length = max_length
        self.positions = positions
        self.pad_to_max = pad_to_max
        self._positions = torch.from_numpy(sinusoidal_positions(max_length, width)) if positions else None

    def config(self) -> dict:
        return {"width": self.width, "max_length": self.max_length, "positions": self.positions, "pad_to_max": self.pad_to_max}

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        texts = check_texts(batch)
        tokenised = [words(t)[: self.max_length] for t in texts]
        length = self.max_length if self.pad_to_max else max(1, max(len(w) for w in tokenised))
        tokens = np.zeros((len(texts), length, self.width), dtype=np.float32)
        mask = np.zeros((len(texts), length), dtype=bool)
        for i, row in enumerate(tokenised):
            for j, word in enumerate(row):
                tokens[i, j] = word_vector(word, self.width)
            mask[i, : len(row)] = True
        tokens = torch.from_numpy(tokens)
        if self._positions is not None:
            tokens = tokens + self._positions[:length] * torch.from_numpy(mask).unsqueeze(-1)
        return tokens.to(self.device), torch.from_numpy(mask).to(self.device)


@register(
    "text",
    "hashed-words",
    licence="Apache-2.0 (mupd code; no weights)",
    commercial="yes",
    source="built in: blake2b-seeded word vectors",
    width="configurable (default 64)",
)
def build_hashed_words(width: int = 64, max_length: int = 32, positions: bool = False, pad_to_max: bool = True, path=None):
    # ``path`` is accepted (and ignored) so a bundle can pass its weights folder uniformly.
    return HashedWordsEncoder(width=width, max_length=max_length, positions=positions, pad_to_max=pad_to_max)
