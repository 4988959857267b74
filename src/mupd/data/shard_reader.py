"""Reading shard folders on any fsspec file system: rows by byte range, the (seed, epoch) order,
the dihedral augmentation. ``mupd.data.shards`` (ShardDataset) and ``mupd.train.stream``
(ShardStream, what ``mupd train`` reads) are built on these, so both see one order.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Sequence

import torch

from ..errors import MupdError, require

FORMAT = "mupd-shards"
SPATIAL_KEYS = ("latent", "source_latent", "pixels")  # (C, h, w) maps the dihedral augmentation acts on
GRID_KEYS = ("align_patches",)  # (g*g, E) row-major token grids of the same image, rotated alike
HALF_KEYS = ("align_patches", "align_cls")  # alignment targets: stored as float16 (half the bytes)


# --- reading: only the rows asked for, from any fsspec file system ------------------------------
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class ShardReader:
    """A shard folder on a local disk or any fsspec URL. Reads each shard's safetensors header once,
    then only the byte ranges holding the rows asked for (rows less than ``merge_gap_bytes`` apart
    share one request: 256 KiB on a local disk, 1 MiB on object stores where a request costs more
    than reading a megabyte), so a rank reads about its share of the data and never a whole shard
    set into memory. ``requests`` counts range reads (tests count them)."""

    def __init__(self, url: str | os.PathLike):
        import fsspec

        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,))
        self.merge_gap_bytes = 256 * 1024 if local else 1024 * 1024
        self.requests = 0
        self.shards_touched: set[str] = set()
        self._headers: dict[str, tuple[dict, int]] = {}
        self._metas: dict[str, dict] = {}
        require(self.fs.isdir(self.root), f"shard folder {self.url} does not exist")
        if not self.fs.exists(self._path("index.json")):
            raise MupdError(f"{self.url} has no index.json: the encode job did not finish; re-run `mupd data encode` "
                            "with the same arguments to resume it")
        self.index = self.json("index.json")
        require(self.index.get("format") == FORMAT, f"{self.url}/index.json is not a mupd shard index")

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        return self.fs.exists(self._path(name))

    def json(self, name: str) -> dict:
        import json

        try:
            return json.loads(self.fs.cat_file(self._path(name)))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MupdError(f"{self.url}/{name} is not valid JSON ({exc}); re-run `mupd data encode` to rewrite it") from None

    def meta(self, shard: str) -> dict:
        """The shard's JSON (ids, labels, captions), cached for the shards read most recently."""
        if shard not in self._metas:
            if len(self._metas) >= 16:
                self._metas.pop(next(iter(self._metas)))
            self._metas[shard] = self.json(f"{shard}.json")
        return self._metas[shard]

    def header(self, shard: str) -> tuple[dict, int]:
        """(safetensors header {name: {dtype, shape, data_offsets}}, byte offset of the data)."""
        import json
        import struct

        if shard not in self._headers:
            path = self._path(f"{shard}.safetensors")
            try:
                (length,) = struct.unpack("<Q", self.fs.cat_file(path, start=0, end=8))
                head = json.loads(self.fs.cat_file(path, start=8, end=8 + length))
            except (struct.error, json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError) as exc:
                raise MupdError(f"{self.url}/{shard}.safetensors could not be read as safetensors ({exc}); re-encode it") from None
            head.pop("__metadata__", None)
            if len(self._headers) >= 1024:
                self._headers.pop(next(iter(self._headers)))
            self._headers[shard] = (head, 8 + length)
        return self._headers[shard]

    def rows(self, shard: str, rows: Sequence[int], keys: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """``{tensor: (len(rows), ...)}`` holding rows ``rows`` (in that order) of the shard."""
        head, base = self.header(shard)
        self.shards_touched.add(shard)
        wanted = sorted(set(int(r) for r in rows))
        path = self._path(f"{shard}.safetensors")
        plan, starts, ends = [], [], []
        for key in keys if keys is not None else list(head):
            info = head[key]
            shape = tuple(info["shape"])
            row_bytes = (info["data_offsets"][1] - info["data_offsets"][0]) // max(shape[0], 1)
            for a, b in _spans(wanted, max(1, self.merge_gap_bytes // max(row_bytes, 1))):
                plan.append((key, a, b, shape))
                starts.append(base + info["data_offsets"][0] + a * row_bytes)
                ends.append(base + info["data_offsets"][0] + b * row_bytes)
        blobs = self._read_ranges(path, starts, ends)
        self.requests += len(starts)
        pieces: dict[str, list[torch.Tensor]] = {}
        cursor: dict[str, int] = {}
        for (key, a, b, shape), blob, start, end in zip(plan, blobs, starts, ends):
            require(len(blob) == end - start, f"{self.url}/{shard}.safetensors is shorter than its header says; re-encode it")
            with warnings.catch_warnings():  # a read-only view; the rows taken below are copies
                warnings.simplefilter("ignore", UserWarning)
                block = torch.frombuffer(blob, dtype=_DTYPES[head[key]["dtype"]]).reshape(b - a, *shape[1:])
            i = cursor.get(key, 0)
            j = i
            while j < len(wanted) and wanted[j] < b:  # the wanted rows inside [a, b), in order
                j += 1
            pieces.setdefault(key, []).append(block[torch.tensor(wanted[i:j], dtype=torch.long) - a])
            cursor[key] = j
        pick = torch.searchsorted(torch.tensor(wanted, dtype=torch.long), torch.tensor([int(r) for r in rows], dtype=torch.long))
        return {key: torch.cat(parts)[pick] for key, parts in pieces.items()}

    def _read_ranges(self, path: str, starts: list[int], ends: list[int]) -> list[bytes]:
        """Byte ranges of one file: concurrent requests on async (object store) file systems, one
        open file and seeks elsewhere (a local disk)."""
        if not starts:
            return []
        if getattr(self.fs, "async_impl", False):
            return self.fs.cat_ranges([path] * len(starts), starts, ends, on_error="raise")
        out = []
        with self.fs.open(path, "rb") as f:
            for start, end in zip(starts, ends):
                f.seek(start)
                out.append(f.read(end - start))
        return out


def _spans(sorted_rows: list[int], max_gap_rows: int) -> list[tuple[int, int]]:
    """Half-open row ranges covering ``sorted_rows``; rows closer than ``max_gap_rows`` share a range."""
    spans: list[list[int]] = []
    for r in sorted_rows:
        if spans and r - spans[-1][1] < max_gap_rows:
            spans[-1][1] = r + 1
        else:
            spans.append([r, r + 1])
    return [(a, b) for a, b in spans]


class EpochOrder:
    """Where stream position ``p`` lives, a pure function of (seed, epoch): epoch ``p // n`` visits
    the shards in a (seed, epoch) permutation and each shard's rows in a (seed, epoch, shard)
    permutation. Costs O(shards) per epoch and O(rows) per shard visited, never a pass over the
    data before ``p`` (a resume jumps straight there). ``sizes`` may be cut short (``data.limit``)."""

    def __init__(self, sizes: Sequence[int], seed: int = 0, shuffle: bool = True):
        self.sizes = torch.tensor([int(s) for s in sizes], dtype=torch.long)
        self.n = int(self.sizes.sum())
        require(self.n > 0, "the shard set holds no samples")
        self.seed, self.shuffle = int(seed), shuffle
        self._epoch: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._rows: dict[tuple[int, int], torch.Tensor] = {}

    def shard_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(shard indices in visiting order, cumulative end position of each within the epoch)."""
        if self._epoch is None or self._epoch[0] != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
                order = torch.randperm(len(self.sizes), generator=g)
            else:
                order = torch.arange(len(self.sizes))
            self._epoch = (epoch, order, torch.cumsum(self.sizes[order], 0))
        return self._epoch[1], self._epoch[2]

    def shard_rows(self, epoch: int, shard: int) -> torch.Tensor:
        key = (int(epoch), int(shard))
        if key not in self._rows:
            n = int(self.sizes[shard])
            if self.shuffle:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(epoch)) * 1_000_033 + int(shard) + 1)
                self._rows[key] = torch.randperm(n, generator=g)
            else:
                self._rows[key] = torch.arange(n)
            if len(self._rows) > 256:
                self._rows.pop(next(iter(self._rows)))
        return self._rows[key]

    def locate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shard, row) of each global stream position."""
        positions = positions.long()
        shards, rows = torch.empty_like(positions), torch.empty_like(positions)
        epochs = positions // self.n
        for epoch in epochs.unique().tolist():
            sel = epochs == epoch
            offset = positions[sel] - epoch * self.n
            order, ends = self.shard_order(epoch)
            slot = torch.searchsorted(ends, offset, right=True)
            shard = order[slot]
            within = offset - (ends[slot] - self.sizes[shard])
            shards[sel] = shard
            picked = torch.empty_like(within)
            for s in shard.unique().tolist():
                at = shard == s
                picked[at] = self.shard_rows(epoch, s)[within[at]]
            rows[sel] = picked
        return shards, rows


# --- augmentation ---------------------------------------------------------------------------------
def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` in 0..7 of the dihedral group on the last two axes: rot90^(k%4), then a flip if k>=4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y


def dihedral_codes(seed: int, positions: torch.Tensor) -> torch.Tensor:
    """One dihedral element (0..7) per global stream position, a pure function of (seed, position)
    (splitmix64), so any rank, worker or resumed run draws the same one for a sample."""
    mask = (1 << 64) - 1
    out = []
    for p in positions.tolist():
        z = (int(seed) * 0x9E3779B97F4A7C15 + int(p) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % 8)
    return torch.tensor(out, dtype=torch.long)


def augment(batch: dict, codes: torch.Tensor) -> dict:
    """Apply element ``codes[i]`` to row ``i`` of every spatial map alike: ``SPATIAL_KEYS`` (C, h, w)
    maps and ``GRID_KEYS`` (g*g, E) row-major token grids (alignment targets; the CLS is left as is)."""
    out = dict(batch)
    for key in [k for k in (*SPATIAL_KEYS, *GRID_KEYS) if k in batch]:
        x = batch[key]
        grid = key in GRID_KEYS
        if grid:
            g = math.isqrt(x.shape[1])
            require(g * g == x.shape[1], f"{key} holds {x.shape[1]} tokens, not a square grid")
            x = x.reshape(x.shape[0], g, g, -1).permute(0, 3, 1, 2)
        y = x.clone()
        for k in codes.unique().tolist():
            rows = (codes == k).nonzero().flatten()
            y[rows] = dihedral(x[rows], k)
        out[key] = y.permute(0, 2, 3, 1).reshape(batch[key].shape) if grid else y
    return out


def pad_tokens(tensors: dict, lengths: dict) -> dict:
    """Pad token sequences (``<m>`` + ``<m>_mask``) to one length per dataset (shards may differ)."""
    out = dict(tensors)
    for key, length in lengths.items():
        if key in out and out[key].shape[1] < length:
            pad = length - out[key].shape[1]
            out[key] = torch.cat([out[key], out[key].new_zeros((out[key].shape[0], pad, *out[key].shape[2:]))], 1)
            mask = f"{key}_mask"
            out[mask] = torch.cat([out[mask], out[mask].new_zeros((out[mask].shape[0], pad))], 1)
    return out


