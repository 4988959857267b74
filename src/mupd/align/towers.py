"""Small encoders trained from scratch by ``mupd align`` (the offline defaults).

Each tower is a ``ConditionEncoder``: ``encode`` gives its tokens (width ``width``) for the
generator's cross-attention; ``embed`` gives the L2-normalised vector in the shared space (width
``embed_dim``) for retrieval, zero-shot and metrics. Unlike the frozen adapters they train, so no
``no_grad`` here — wrap calls in ``torch.no_grad()`` when only reading features.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.base import ConditionEncoder, check_expression, check_texts, masked_mean
from ..encoders.hashed import words
from ..encoders.image import ImagePreprocess
from ..errors import require

SPECIALS = ("[PAD]", "[UNK]", "[CLS]")


class WordVocabulary:
    """Word-level vocabulary built from captions (lower-cased words, ``hashed.words`` tokeniser)."""

    def __init__(self, tokens: list[str]):
        require(list(tokens[: len(SPECIALS)]) == list(SPECIALS), f"a word vocabulary must start with {SPECIALS}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: list[str], min_count: int = 1, max_size: int = 20000) -> "WordVocabulary":
        counts = Counter(w for t in texts for w in words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))[: max_size - len(SPECIALS)]
        return cls(list(SPECIALS) + kept)

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] + word ids, padded to the longest in the batch (at most ``max_length``)."""
        rows = [[2] + [self.index.get(w, 1) for w in words(t)][: max_length - 1] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != 0


class SmallImageTower(ConditionEncoder):
    """A 4-stage CNN (conv-GroupNorm-GELU, stride 2): tokens = the final (S/16)^2 feature map."""

    modality = "image"

    def __init__(self, width: int = 128, embed_dim: int = 128, image_size: int = 64, channels=(32, 64, 96)):
        super().__init__()
        self.width, self.embed_dim, self.image_size = width, embed_dim, image_size
        dims = [3, *channels, width]
        layers = []
        for cin, cout in zip(dims[:-1], dims[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.GELU(),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
        self.backbone = nn.Sequential(*layers)
        self.preprocess = ImagePreprocess(image_size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.head = nn.Linear(width, embed_dim)

    def config(self) -> dict:
        return {"width": self.width, "embed_dim": self.embed_dim, "image_size": self.image_size}

    def encode_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Already preprocessed (B,3,S,S) float -> tokens (B, N, width)."""
        return self.backbone(x).flatten(2).transpose(1, 2)

    def encode(self, batch):
        tokens = self.encode_pixels(self.preprocess(batch))
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def project(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = tokens.mean(1) if mask is None else masked_mean(tokens, mask)
        return F.normalize(self.head(pooled), dim=-1)

    def embed(self, batch) -> torch.Tensor:
        return self.project(*self.encode(batch))


class SmallTextTower(ConditionEncoder):
    """Word embeddings + learned positions + a pre-norm transformer; pooled at [CLS]."""

    modality = "text"

    def __init__(self, vocabulary: WordVocabulary, width: int = 128, embed_dim: int = 128, depth: int = 2,
                 heads: int = 4, max_length: int = 32):
        super().__init__()
        self.vocabulary = vocabulary
        self.width, self.embed_dim, self.depth, self.heads, self.max_length = width, embed_dim, depth, heads, max_length
        self.embedding = nn.Embedding(len(vocabulary), width, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, 0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, embed_dim)

    def config(self) -> dict:
        return {"width": self.width, "embed_dim": self.embed_dim, "depth": self.depth, "heads": self.heads,
                "max_length": self.max_length, "vocabulary": self.vocabulary.tokens}

    def encode(self, batch):
        ids, mask = self.vocabulary.ids(check_texts(batch), self.max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        h = self.embedding(ids) + self.positions[:, : ids.shape[1]]
        h = self.norm(self.transformer(h, src_key_padding_mask=~mask))
        return h, mask

    def project(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.head(tokens[:, 0]), dim=-1)

    def embed(self, batch) -> torch.Tensor:
        return self.project(*self.encode(batch))


class SmallRnaTower(ConditionEncoder):
    """LayerNorm-MLP over the vocabulary's z-scored genes -> ``tokens`` tokens of width ``width``."""

    modality = "rna"

    def __init__(self, genes: list[str], width: int = 128, embed_dim: int = 128, hidden: int = 256, tokens: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        require(bool(genes), "an RNA tower needs its gene list")
        self.genes, self.width, self.embed_dim, self.hidden, self.num_tokens = list(genes), width, embed_dim, hidden, tokens
        self.dropout = dropout
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(len(genes), hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Linear(hidden, width * tokens))
        self.head = nn.Linear(width, embed_dim)

    def config(self) -> dict:
        return {"genes": self.genes, "width": self.width, "embed_dim": self.embed_dim, "hidden": self.hidden,
                "tokens": self.num_tokens, "dropout": self.dropout}

    def encode(self, batch):
        x = check_expression(batch, len(self.genes)).to(self.device)
        tokens = self.mlp(x).view(len(x), self.num_tokens, self.width)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)

    def project(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.head(tokens.mean(1)), dim=-1)

    def embed(self, batch) -> torch.Tensor:
        return self.project(*self.encode(batch))


def build_tower(modality: str, config: dict) -> ConditionEncoder:
    config = dict(config)
    if modality == "image":
        return SmallImageTower(**config)
    if modality == "text":
        return SmallTextTower(WordVocabulary(config.pop("vocabulary")), **config)
    if modality == "rna":
        return SmallRnaTower(**config)
    raise ValueError(modality)
