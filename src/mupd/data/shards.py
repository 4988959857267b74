"""Shards: latents + precomputed condition tensors + metadata, cached for training.

Folder format (``mupd data encode`` writes it; ``ShardDataset`` streams it)::

    SHARDS/shard-00000.safetensors   tensors, first axis = sample:
                                       latent (N, C, h, w) float32   standardised VAE latents
                                       source_latent (N, C', h, w)   paired source domain (stain/translate)
                                       label (N,) int64              -1 = no label
                                       <modality> (N, L, D) + <modality>_mask (N, L) bool   condition tokens
                                       rna_values (N, G) float32     expression after the gene vocabulary
    SHARDS/shard-00000.json          {"ids": [...], "labels": [...], "captions": [...|null], "n": N,
                                      "gene_vocabulary": version|null, "skipped": {...}}
    SHARDS/index.json                written last: {"format": "mupd-shards", "shards": [{"name", "n"}],
                                      "n", "tensors": {name: per-sample shape}, "vae", "source_vae",
                                      "gene_vocabulary", "encoders", "source", ...}

A shard is finished when both of its files exist: each is written atomically, the JSON second.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..checkpoint import load_tensors, read_json, save_tensors, write_json
from ..errors import MupdError, require

FORMAT = "mupd-shards"
SPATIAL_KEYS = ("latent", "source_latent")  # tensors the dihedral augmentation acts on


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def write_shard(out: str | os.PathLike, index: int, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write one shard atomically: tensors first, then the JSON that marks it finished."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(meta["ids"])
    for k, v in tensors.items():
        require(v.shape[0] == n, f"shard tensor '{k}' has {v.shape[0]} rows but the shard lists {n} ids")
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
    path = Path(path)
    require(path.is_dir(), f"shard folder {path} does not exist")
    if not (path / "index.json").exists():
        raise MupdError(f"{path} has no index.json: the encode job did not finish; re-run `mupd data encode` "
                        "with the same arguments to resume it")
    index = read_json(path / "index.json")
    require(index.get("format") == FORMAT, f"{path}/index.json is not a mupd shard index")
    return index


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` in 0..7 of the dihedral group on the last two axes: rot90^(k%4), then a flip if k>=4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


class ShardDataset(torch.utils.data.IterableDataset):
    """Stream shards. Each epoch is a (seed, epoch) permutation of shard order and of samples inside
    each shard; global position ``c`` goes to rank ``c % W`` and, inside a rank, to DataLoader worker
    ``(c // W) % K``, so no sample is seen twice per epoch. With ``drop_last`` every rank yields
    exactly ``N // W`` samples (DDP needs equal step counts). ``augment`` applies one random dihedral
    element (flips / 90-degree rotations) to ``latent`` and ``source_latent`` alike."""

    def __init__(self, path: str | os.PathLike, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, augment: bool = True, drop_last: bool = False):
        self.path = Path(path)
        self.index = read_index(self.path)
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
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
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
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.shards), generator=g).tolist() if self.shuffle else range(len(self.shards))
        limit = self._limit(world)
        position = 0
        for s in order:
            n = int(self.shards[s]["n"])
            inner = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
            mine = []
            for j in inner:
                c = position
                position += 1
                if c < limit and c % world == rank and (c // world) % workers == worker:
                    mine.append((c, j))
            if not mine:
                continue  # never read a shard this consumer takes nothing from
            tensors, meta = self._load(s)
            for c, j in mine:
                yield self._item(tensors, meta, j, c)

    def _load(self, s: int):
        name = self.shards[s]["name"]
        tensors = load_tensors(self.path / f"{name}.safetensors")
        meta = read_json(self.path / f"{name}.json")
        require(len(meta["ids"]) == int(self.shards[s]["n"]), f"{self.path}/{name}.json disagrees with index.json; re-encode")
        return tensors, meta

    def _item(self, tensors: dict, meta: dict, j: int, c: int) -> dict:
        item = {"id": meta["ids"][j], "caption": meta["captions"][j] or ""}
        for key, value in tensors.items():
            item[key] = value[j]
        for key, length in self.token_lengths.items():  # pad token sequences to one length per dataset
            if key in item and item[key].shape[0] < length:
                pad = length - item[key].shape[0]
                item[key] = torch.cat([item[key], item[key].new_zeros((pad,) + tuple(item[key].shape[1:]))])
                mask = f"{key}_mask"
                item[mask] = torch.cat([item[mask], item[mask].new_zeros(pad)])
        if self.augment:
            k = int(torch.randint(8, (1,), generator=torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 10_007 + c)))
            for key in SPATIAL_KEYS:
                if key in item:
                    item[key] = dihedral(item[key], k)
        return item


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
