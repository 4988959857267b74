"""Whole-region inference by overlapping tiles with seamless blending.

A region larger than the model's tile is cut into tiles that overlap by ``overlap`` pixels; each
tile's output is weighted by a raised-cosine ramp that rises across the overlap and is flat inside,
and the weighted sum is divided by the summed weights. Weights are strictly positive, so a pixel
covered by one tile gets exactly that tile's value, and a translation that is the same on every
tile (e.g. the identity) is reproduced without seams.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import require


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` that overlap by >= ``overlap``."""
    require(tile > 0, f"tile size must be positive, got {tile}")
    require(0 <= overlap < tile, f"overlap must be in [0, tile), got overlap={overlap} for tile={tile}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    # spread the starts evenly so every overlap is at least ``overlap`` and the last tile ends flush
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp(tile: int, overlap: int, kind: str = "cosine") -> torch.Tensor:
    """1-D blending weights of length ``tile``: rising over ``overlap`` at both ends, 1 inside, > 0."""
    w = torch.ones(tile, dtype=torch.float64)
    if overlap > 0:
        pos = (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap  # (0, 1), never 0
        if kind == "cosine":
            edge = 0.5 - 0.5 * torch.cos(math.pi * pos)
        elif kind == "linear":
            edge = pos
        else:
            raise ValueError(f"unknown ramp kind {kind!r}; use 'cosine' or 'linear'")
        w[:overlap] = edge
        w[tile - overlap :] = edge.flip(0)
    return w


def tiled_apply(
    image: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    tile: int,
    overlap: int,
    batch_size: int = 4,
    ramp_kind: str = "cosine",
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` (tiles ``(B, C, tile, tile)`` -> ``(B, C', tile, tile)``) over a ``(C, H, W)``
    region with overlapping, blended tiles; returns ``(C', H, W)``.

    Regions smaller than a tile are reflect-padded (replicate where too small to reflect) and cropped back.
    """
    require(image.ndim == 3, f"tiled_apply expects one (C, H, W) region, got shape {tuple(image.shape)}")
    _, height, width = image.shape
    pad_h, pad_w = max(0, tile - height), max(0, tile - width)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    H, W = image.shape[1:]
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    weight_1d = ramp(tile, overlap, ramp_kind)
    weight = (weight_1d[:, None] * weight_1d[None, :]).to(image.device)
    positions = [(y, x) for y in ys for x in xs]
    out = acc = None
    bar = tqdm(total=len(positions), desc="tiles", unit="tile", disable=not progress)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i : i + batch_size]
        batch = torch.stack([image[:, y : y + tile, x : x + tile] for y, x in chunk])
        result = fn(batch)
        require(
            result.ndim == 4 and result.shape[0] == len(chunk) and tuple(result.shape[2:]) == (tile, tile),
            f"the tile function returned shape {tuple(result.shape)}; expected ({len(chunk)}, C, {tile}, {tile})",
        )
        if out is None:
            out = torch.zeros(result.shape[1], H, W, dtype=torch.float64, device=image.device)
            acc = torch.zeros(H, W, dtype=torch.float64, device=image.device)
        for (y, x), r in zip(chunk, result):
            out[:, y : y + tile, x : x + tile] += r.to(torch.float64) * weight
            acc[y : y + tile, x : x + tile] += weight
        bar.update(len(chunk))
    bar.close()
    blended = (out / acc).to(result.dtype if result.is_floating_point() else torch.float32)
    return blended[:, :height, :width]
