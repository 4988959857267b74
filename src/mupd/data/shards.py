"""Shards: latents + precomputed condition tensors + metadata, cached for training.

Folder format (``mupd data encode`` writes it; ``ShardDataset`` streams it)::

    SHARDS/shard-00000.safetensors   tensors, first axis = sample:
                                       latent (N, C, h, w) float32   standardised VAE latents
                                       source_latent (N, C', h, w)   paired source domain (stain/translate)
                                       label (N,) int64              -1 = no label
                                       <modality> (N, L, D) + <modality>_mask (N, L) bool   condition tokens
                                       rna_values (N, G) float32     expression after the gene vocabulary
                                       align_patches (N, g*g, E) + align_cls (N, E) float16   alignment targets
    SHARDS/shard-00000.json          {"ids": [...], "labels": [...], "captions": [...|null], "n": N,
                                      "gene_vocabulary": version|null, "skipped": {...}}
    SHARDS/index.json                written last: {"format": "mupd-shards", "shards": [{"name", "n"}],
                                      "n", "tensors": {name: per-sample shape}, "vae", "source_vae",
                                      "gene_vocabulary", "encoders", "source", ...}

A shard is finished when both of its files exist: each is written atomically, the JSON second.
The folder may live on any fsspec URL (``s3://``, ``gs://`` ...): readers fetch only the byte
ranges of the rows they need (``shard_reader.ShardReader``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..checkpoint import read_json, save_tensors, write_json
from ..errors import MupdError, require
from .shard_reader import (FORMAT, GRID_KEYS, HALF_KEYS, SPATIAL_KEYS, EpochOrder, ShardReader, augment, dihedral,  # noqa: F401
                           dihedral_codes, pad_tokens)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_shard(out: str | os.PathLike, index: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write one shard atomically: tensors first, then the JSON that marks it finished."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(meta["ids"])
    for k, v in tensors.items():
        require(v.shape[0] == n, f"shard tensor '{k}' has {v.shape[0]} rows but the shard lists {n} ids")
    tensors = {k: v.half() if k in HALF_KEYS and v.is_floating_point() else v for k, v in tensors.items()}
    tmp = out / f".{shard_name(index)}.tmp.safetensors"
    save_tensors(tmp, tensors)
    os.replace(tmp, out / f"{shard_name(index)}.safetensors")
    write_json(out / f"{shard_name(index)}.json", {"n": n, **meta})


def shard_finished(out: str | os.PathLike, index: int, ids: Sequence[str] | None = None, signature: str = "") -> bool:
    """Both files exist (and, when ``ids`` is given, the shard was planned for exactly these ids
    under the same job ``signature``: a re-run with another VAE or size redoes it)."""
    out = Path(out)
    js, st = out / f"{shard_name(index)}.json", out / f"{shard_name(index)}.safetensors"
    if not (js.exists() and st.exists()):
        return False
    if ids is None:
        return True
    try:
        meta = read_json(js)
    except MupdError:
        return False
    return meta.get("planned") == ids_digest(ids, signature)


def ids_digest(ids: Sequence[str], signature: str = "") -> str:
    """Fingerprint of the ids a shard was planned to hold and of the job settings that shape it."""
    import hashlib

    return hashlib.sha256("\n".join([*map(str, ids), signature]).encode()).hexdigest()[:16]


def write_index(out: str | os.PathLike, n_shards: int, meta: dict) -> Path:
    """Gather the finished shards into ``index.json`` (deterministic content, safe to rewrite)."""
    out = Path(out)
    shards, skipped, total, tensors, max_tokens = [], {}, 0, None, {}
    for k in range(n_shards):
        require(shard_finished(out, k), f"{out}: {shard_name(k)} is not finished; re-run the encode command to complete it")
        info = read_json(out / f"{shard_name(k)}.json")
        shards.append({"name": shard_name(k), "n": info["n"]})
        total += info["n"]
        for reason, ids in info.get("skipped", {}).items():
            entry = skipped.setdefault(reason, {"count": 0, "first": []})
            entry["count"] += len(ids)
            entry["first"] = (entry["first"] + list(ids))[:5]
        if tensors is None and info["n"]:
            tensors = info.get("tensors")
        for key, shape in info.get("tensors", {}).items():
            if key.endswith("_mask"):  # token sequences: the longest over shards (ShardDataset pads to it)
                name = key[: -len("_mask")]
                max_tokens[name] = max(max_tokens.get(name, 0), int(shape[0]))
    write_json(out / "index.json", {"format": FORMAT, "version": 1, "n": total, "shards": shards,
                                     "tensors": tensors or {}, "max_tokens": max_tokens, "skipped": skipped, **meta})
    return out / "index.json"


def write_shards(out: str | os.PathLike, samples: Sequence[dict], *, shard_size: int = 256, meta: dict | None = None) -> Path:
    """Write in-memory samples (``{"id", "latent", optional "label", "caption", other tensors}``) as
    shards + index. For datasets that need encoding use ``mupd.data.encode.encode_dataset``."""
    require(len(samples) > 0, "write_shards got no samples")
    ids = [str(s["id"]) for s in samples]
    require(len(set(ids)) == len(ids), "write_shards: sample ids must be unique")
    n_shards = math.ceil(len(samples) / shard_size)
    for k in range(n_shards):
        part = samples[k * shard_size:(k + 1) * shard_size]
        tensors = {key: torch.stack([torch.as_tensor(s[key]) for s in part])
                   for key in part[0] if key not in ("id", "label", "caption") and torch.is_tensor(part[0][key])}
        labels = [s.get("label") for s in part]
        tensors["label"] = torch.tensor([-1 if x is None else int(x) for x in labels], dtype=torch.long)
        write_shard(out, k, tensors, {"ids": [str(s["id"]) for s in part], "labels": labels,
                                      "planned": ids_digest([str(s["id"]) for s in part]),
                                      "captions": [s.get("caption") for s in part],
                                      "tensors": {key: list(v.shape[1:]) for key, v in tensors.items()}})
    return write_index(out, n_shards, dict(meta or {}))


def read_index(path: str | os.PathLike) -> dict:
    """``index.json`` of a shard folder: a local path or any fsspec URL (``s3://``, ``memory://`` ...)."""
    return ShardReader(path).index


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream one epoch of a shard folder (local or fsspec URL) sample by sample, in the
    ``EpochOrder`` of (seed, epoch). Position ``c`` goes to rank ``c % W`` and, inside a rank, to
    DataLoader worker ``(c // W) % K``, so no sample is seen twice per epoch; a shard is only read
    for the rows this consumer takes. With ``drop_last`` every rank yields exactly ``N // W``
    samples (DDP needs equal step counts). ``augment`` applies one dihedral element per sample to
    ``latent``, ``source_latent`` and the alignment grid alike. ``mupd train`` batches the same
    order with ``mupd.train.stream.ShardStream``."""

    def __init__(self, path: str | os.PathLike, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, augment: bool = True, drop_last: bool = False):
        self.reader = ShardReader(path)
        self.path, self.index = self.reader.url, self.reader.index
        self.shards = self.index["shards"]
        self.n = int(self.index["n"])
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.augment, self.drop_last = shuffle, int(seed), augment, drop_last
        self.epoch = 0
        self.token_lengths = dict(self.index.get("max_tokens", {}))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _world(self) -> tuple[int, int]:
        rank, world = self.rank, self.world_size
        dist = torch.distributed
        if (rank is None or world is None) and dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world = dist.get_world_size() if world is None else world
        return int(rank or 0), int(world or 1)

    def _limit(self, world: int) -> int:
        return (self.n // world) * world if self.drop_last else self.n

    def __len__(self) -> int:
        rank, world = self._world()
        limit = self._limit(world)
        return limit // world + (1 if rank < limit % world else 0)

    def __iter__(self) -> Iterator[dict]:
        rank, world = self._world()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = EpochOrder([s["n"] for s in self.shards], self.seed, self.shuffle)
        shard_order, ends = order.shard_order(self.epoch)
        limit = self._limit(world)
        for s, end in zip(shard_order.tolist(), ends.tolist()):
            first = end - int(self.shards[s]["n"])
            mine = [c for c in range(first, min(end, limit)) if c % world == rank and (c // world) % workers == worker]
            if not mine:
                continue  # never read a shard this consumer takes nothing from
            rows = order.shard_rows(self.epoch, s)[torch.tensor(mine) - first]
            yield from self._items(s, rows.tolist(), torch.tensor(mine) + self.epoch * self.n)

    def _items(self, s: int, rows: list[int], positions: torch.Tensor) -> Iterator[dict]:
        name = self.shards[s]["name"]
        meta = self.reader.meta(name)
        require(len(meta["ids"]) == int(self.shards[s]["n"]), f"{self.path}/{name}.json disagrees with index.json; re-encode")
        tensors = pad_tokens(self.reader.rows(name, rows), self.token_lengths)
        if self.augment:
            tensors = augment(tensors, dihedral_codes(self.seed, positions))
        for i, j in enumerate(rows):
            yield {"id": meta["ids"][j], "caption": meta["captions"][j] or "", **{k: v[i] for k, v in tensors.items()}}


def read_all(path: str | os.PathLike) -> dict:
    """Every sample in shard order, stacked: ``{"ids", "captions", "labels" (N,), tensors...}`` (no augmentation)."""
    ds = ShardDataset(path, rank=0, world_size=1, shuffle=False, augment=False)
    items = list(ds)
    require(bool(items), f"shard folder {path} holds no samples")
    out = {"ids": [it["id"] for it in items], "captions": [it["caption"] for it in items]}
    for key in items[0]:
        if torch.is_tensor(items[0][key]):
            out[key] = torch.stack([it[key] for it in items])
    out["labels"] = out.pop("label")
    return out
