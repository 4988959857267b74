"""Streaming training data: ``mupd train`` reads shards through a DataLoader, never all of them.

``ShardStream`` is what ``from_shards`` (and, after its one-off encode, ``from_folder``) hands the
trainer. ``batches(seed=, start=, global_size=G, rank=r, world=W)`` yields this rank's part of
global batch after global batch: rank ``r`` takes stream positions ``start + r, start + r + W, ...``
of each block of ``G``; position ``p`` is sample ``EpochOrder.locate(p)`` (a (seed, epoch) shard
permutation, then a (seed, epoch, shard) row permutation), so the data order is independent of
the world size and of the worker count, and a resumed run jumps straight to ``images_seen``
without reading any earlier shard. Only the rows a rank needs are fetched (byte ranges, any
fsspec URL), so resident memory does not grow with the dataset.

DataLoader: ``workers`` processes (config ``data.workers``; 0 = read in the training process)
each build whole per-rank batch parts (batch ``k`` is built by worker ``k % workers``, which
the DataLoader returns in order), pinned when CUDA is present; one iterator lives for the whole
run, so the workers persist. Augmentation: one dihedral element per (seed, position) applied
alike to ``latent``, ``source_latent`` and the alignment grid ``align_patches``.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from ..data.shard_reader import HALF_KEYS, EpochOrder, ShardReader, augment, dihedral_codes, pad_tokens
from ..errors import require


class ShardNames(dict):
    """``data.tensors`` of a streamed source: says which per-sample tensors the shards hold (the
    trainer only asks ``"align_patches" in data.tensors``). Reading an entry loads that tensor of
    every sample in shard order, unaugmented: for inspecting small sets; training never does."""

    def __init__(self, stream: "ShardStream", keys):
        super().__init__(dict.fromkeys(keys))
        self._stream = stream

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        stream = self._stream
        parts = [stream.reader.rows(name, range(size), keys=[key, *([f"{key}_mask"] if key in stream.token_lengths else [])])
                 for name, size in zip(stream.shards, stream.sizes) if size]
        return stream.as_trained(key, torch.cat([pad_tokens(p, stream.token_lengths)[key] for p in parts]))


class ShardStream:
    """A shard folder (local path or fsspec URL) as a streamed training source (see module doc)."""

    def __init__(self, path: str | os.PathLike, *, limit: int | None = None, captions: dict | None = None,
                 workers: int = 0, augment: bool = True, pin_memory: bool | None = None, class_names=None):
        self.reader = ShardReader(path)
        self.path, self.index = self.reader.url, self.reader.index
        require(workers >= 0, f"data.workers must be 0 or more, got {workers}")
        self.shards = [s["name"] for s in self.index["shards"]]
        sizes = [int(s["n"]) for s in self.index["shards"]]
        if limit is not None:  # the first `limit` samples in shard order
            left, kept = int(limit), []
            for n in sizes:
                kept.append(max(0, min(n, left)))
                left -= kept[-1]
            sizes = kept
        require(sum(sizes) > 0, f"shard folder {self.path} holds no samples")
        self.sizes = sizes
        self.templates = {str(k): str(v) for k, v in (captions or {}).items()}
        self.workers, self.augment = int(workers), augment
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.token_lengths = {k: int(v) for k, v in self.index.get("max_tokens", {}).items()}
        self.class_names = list(class_names or self.index.get("classes") or [])
        self.tensors = ShardNames(self, [k for k in self.index.get("tensors", {}) if k not in ("latent", "label")])
        stats = self.index.get("align_cls_stats")  # written by 'mupd data encode --align-encoder'
        self.cls_stats = None if not stats else (torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
        self._vocabulary = "unread"
        self._captions: list[str] | None = None
        self._orders: dict[int, EpochOrder] = {}

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.index["tensors"]["latent"])

    @property
    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for key, shape in self.index.get("tensors", {}).items():
            if key in ("latent", "label"):
                continue
            shape = [int(x) for x in shape]
            name = key[: -len("_mask")] if key.endswith("_mask") else key
            if name in self.token_lengths:
                shape[0] = self.token_lengths[name]
            shapes[key] = tuple(shape)
        return shapes

    @property
    def vocabulary(self):
        """The ``gene_vocabulary.json`` written by ``mupd data encode --vocabulary`` (None without)."""
        if self._vocabulary == "unread":
            self._vocabulary = None
            if self.reader.exists("gene_vocabulary.json"):
                from ..data.expression import GeneVocabulary

                self._vocabulary = GeneVocabulary.from_dict(self.reader.json("gene_vocabulary.json"),
                                                            where=f"{self.path}/gene_vocabulary.json")
        return self._vocabulary

    @property
    def captions(self) -> list[str]:
        """Distinct captions for previews, from the shards' JSON (the first 64 shards at most)."""
        if self._captions is None:
            seen: dict[str, None] = {}
            for name, size in list(zip(self.shards, self.sizes))[:64]:
                meta = self.reader.meta(name)
                for caption, label in list(zip(meta["captions"], meta["labels"]))[:size]:
                    seen.setdefault(self._caption(caption, label), None)
            self._captions = list(seen)
        return self._captions

    def _caption(self, caption, label) -> str:
        if caption:
            return str(caption)
        return self.templates.get(str(label), "") if label is not None else ""

    def as_trained(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """Float16 alignment targets back to float32; the raw CLS standardised over the whole set."""
        if key in HALF_KEYS:
            value = value.float()
        if key == "align_cls" and self.cls_stats is not None:
            value = (value - self.cls_stats[0]) / self.cls_stats[1]
        return value

    def order(self, seed: int) -> EpochOrder:
        if seed not in self._orders:
            self._orders[seed] = EpochOrder(self.sizes, seed)
        return self._orders[seed]

    # --- batches --------------------------------------------------------------------------------
    def part(self, *, seed: int, first: int, global_size: int, rank: int = 0, world: int = 1) -> dict:
        """This rank's rows of the global batch at stream positions ``[first, first + global_size)``."""
        positions = torch.arange(first + rank, first + global_size, world)
        shards, rows = self.order(seed).locate(positions)
        pieces, captions = [], [""] * len(positions)
        for s in shards.unique().tolist():
            at = (shards == s).nonzero().flatten()
            name = self.shards[s]
            tensors = pad_tokens(self.reader.rows(name, rows[at].tolist()), self.token_lengths)
            meta = self.reader.meta(name)
            for i, j in zip(at.tolist(), rows[at].tolist()):
                captions[i] = self._caption(meta["captions"][j], meta["labels"][j])
            pieces.append((at, tensors))
        batch = {"position": positions, "caption": captions}
        for key in pieces[0][1]:
            first_piece = pieces[0][1][key]
            out = first_piece.new_empty((len(positions), *first_piece.shape[1:]))
            for at, tensors in pieces:
                out[at] = tensors[key]
            batch[key] = self.as_trained(key, out)
        batch["latent"] = batch["latent"].float()
        batch["label"] = batch["label"].long()
        if self.augment:
            batch = augment(batch, dihedral_codes(seed, positions))
        return batch

    def batches(self, *, seed: int, start: int, global_size: int, rank: int = 0, world: int = 1) -> Iterator[dict]:
        """This rank's part of every global batch from stream position ``start`` on (endless)."""
        parts = _RankParts(self, seed, start, global_size, rank, world)
        loader = torch.utils.data.DataLoader(parts, batch_size=None, collate_fn=_as_built, num_workers=self.workers,
                                             pin_memory=self.pin_memory, persistent_workers=self.workers > 0,
                                             prefetch_factor=2 if self.workers else None)
        return iter(loader)


def _as_built(batch: dict) -> dict:
    """The DataLoader's collate step: parts arrive collated already (built whole by ``part``)."""
    return batch


class _RankParts(torch.utils.data.IterableDataset):
    """Global batch ``k`` (from ``start``) for one rank, built by DataLoader worker ``k % workers``."""

    def __init__(self, source: ShardStream, seed: int, start: int, global_size: int, rank: int, world: int):
        super().__init__()
        self.source, self.seed, self.start, self.size, self.rank, self.world = source, seed, start, global_size, rank, world

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        k, step = (info.id, info.num_workers) if info is not None else (0, 1)
        while True:
            yield self.source.part(seed=self.seed, first=self.start + k * self.size, global_size=self.size,
                                   rank=self.rank, world=self.world)
            k += step
