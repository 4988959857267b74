"""Method (b): an image encoder trained end to end with a linear regression head on the spot panel
(ST-Net's recipe), starting from the fold's aligned image tower. Targets are z-scored per gene on
the training spots; predictions are mapped back to the normalised (log1p-CPM) scale.

Optional neighbouring-spot context (the TRIPLEX / Hist2ST idea): the features of the spot's ``k``
nearest spots of the *same section* (by array position) are mean- or attention-pooled and
concatenated to the spot's own feature before the head. The neighbours pass through the same tower
without gradient, so a step costs one backward pass, not k + 1; the tower learns from the spot's
own crop, the pooling and the head from both.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import torch
from torch import nn

from ..errors import require
from .features import as_uint8_batch

CONTEXT_POOLS = ("mean", "attention")
_ARRAY_ID = re.compile(r"_(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)$")


def spot_positions(ids, coords: np.ndarray) -> np.ndarray:
    """Array positions from her2st-style ids (``SECTION_XxY``), else the given (pixel) coordinates."""
    found = [_ARRAY_ID.search(str(i)) for i in ids]
    if all(found):
        return np.array([[float(m.group(1)), float(m.group(2))] for m in found])
    return np.asarray(coords, np.float64)


def spot_neighbours(sections, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) indices of each spot's ``k`` nearest *other* spots of its own section (ties: spot
    order) and an (N, k) mask; a section with <= k spots pads with the spot itself, masked out."""
    require(k >= 1, f"context needs k >= 1 neighbours, got {k}")
    sections = np.asarray([str(s) for s in sections])
    positions = np.asarray(positions, np.float64)
    index = np.repeat(np.arange(len(sections))[:, None], k, axis=1)
    mask = np.zeros((len(sections), k), dtype=bool)
    for s in np.unique(sections):
        rows = np.where(sections == s)[0]
        d = ((positions[rows, None, :] - positions[None, rows, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        m = min(k, len(rows) - 1)
        order = np.argsort(d, axis=1, kind="stable")[:, :m]
        index[rows, :m] = rows[order]
        mask[rows, :m] = True
    return index, mask


class SpotRegressor(nn.Module):
    def __init__(self, tower: nn.Module, n_genes: int, context: str | None = None):
        super().__init__()
        require(context in (None, *CONTEXT_POOLS), f"context pooling must be one of {CONTEXT_POOLS}, not {context!r}")
        self.tower, self.context = tower, context
        if context == "attention":
            self.attend = nn.Linear(tower.width, 1)
        self.head = nn.Linear(tower.width * (2 if context else 1), n_genes)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.encode_pixels(self.tower.preprocess(pixels)).mean(1)

    def forward(self, pixels: torch.Tensor, neighbours: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``neighbours``: (B, k, 3, S, S) uint8 crops with their (B, k) mask (context models only)."""
        own = self.features(pixels)
        if self.context is None:
            return self.head(own)
        require(neighbours is not None and mask is not None, "a context model needs the neighbouring spots' crops")
        b, k = mask.shape
        with torch.no_grad():
            near = self.features(neighbours.flatten(0, 1)).view(b, k, -1)
        if self.context == "attention":
            # a finite fill: a spot with no neighbour at all gets zero weights, not a NaN softmax
            weights = self.attend(near).squeeze(-1).masked_fill(~mask, -1e9).softmax(1) * mask.float()
        else:
            weights = mask.float() / mask.float().sum(1, keepdim=True).clamp_min(1.0)
        return self.head(torch.cat([own, (weights.unsqueeze(-1) * near).sum(1)], dim=1))


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, (), generator=generator)), dims=(-2, -1))


def _batch(x: torch.Tensor, idx, neighbours, mask):
    if neighbours is None:
        return x[idx], None, None
    return x[idx], x[torch.as_tensor(neighbours[idx])], torch.as_tensor(mask[idx])


def fit_finetuned(tower: nn.Module, images: np.ndarray, targets: np.ndarray, *, epochs: int = 3, batch_size: int = 32,
                  lr: float = 3e-4, head_lr: float = 3e-3, seed: int = 0, progress: bool = False,
                  context: str | None = None, neighbours: np.ndarray | None = None, neighbour_mask: np.ndarray | None = None):
    """Train a copy of ``tower`` + a head; returns (model, target mean, target std, loss history).
    With ``context``, ``neighbours``/``neighbour_mask`` (from ``spot_neighbours``) index ``images``."""
    require(context is None or (neighbours is not None and neighbour_mask is not None),
            "context training needs each spot's neighbours (spot_neighbours)")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SpotRegressor(copy.deepcopy(tower).requires_grad_(True), targets.shape[1], context).train()
    mean, std = targets.mean(0), targets.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    y = torch.from_numpy(((targets - mean) / std).astype(np.float32))
    x = as_uint8_batch(images)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("tower.")]
    optimizer = torch.optim.AdamW([{"params": model.tower.parameters(), "lr": lr},
                                   {"params": head_params, "lr": head_lr}], weight_decay=0.01)
    from tqdm.auto import tqdm

    history = []
    bar = tqdm(total=epochs * len(x), unit="spot", desc="finetune" + (f" +{context} context" if context else ""),
               disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for i in range(0, len(x), batch_size):
            idx = order[i: i + batch_size].numpy()
            own, near, mask = _batch(x, idx, neighbours if context else None, neighbour_mask)
            own = _augment(own, generator)
            near = None if near is None else _augment(near, generator)
            loss = nn.functional.mse_loss(model(own, near, mask), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(len(idx))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        history.append(float(np.mean(losses)))
    bar.close()
    return model.eval(), mean, std, history


@torch.no_grad()
def predict_finetuned(model: SpotRegressor, mean: np.ndarray, std: np.ndarray, images: np.ndarray,
                      neighbours: np.ndarray | None = None, neighbour_mask: np.ndarray | None = None) -> np.ndarray:
    """``neighbours`` index ``images`` (the spots predicted together, e.g. one held-out section)."""
    require(model.context is None or neighbours is not None,
            "this model reads neighbouring spots: predict whole sections (their ids and coordinates are needed)")
    x = as_uint8_batch(images)
    parts = []
    for i in range(0, len(x), 128):
        idx = np.arange(i, min(len(x), i + 128))
        parts.append(model(*_batch(x, idx, neighbours if model.context else None, neighbour_mask)))
    return torch.cat(parts).numpy() * std + mean
