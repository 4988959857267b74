"""Method (b): an image encoder trained end to end with a linear regression head on the spot panel
(ST-Net's recipe), starting from the fold's aligned image tower. Targets are z-scored per gene on
the training spots; predictions are mapped back to the normalised (log1p-CPM) scale."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .features import as_uint8_batch


class SpotRegressor(nn.Module):
    def __init__(self, tower: nn.Module, n_genes: int):
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(tower.width, n_genes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.tower.encode_pixels(self.tower.preprocess(pixels))
        return self.head(tokens.mean(1))


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, (), generator=generator)), dims=(-2, -1))


def fit_finetuned(tower: nn.Module, images: np.ndarray, targets: np.ndarray, *, epochs: int = 3, batch_size: int = 32,
                  lr: float = 3e-4, head_lr: float = 3e-3, seed: int = 0, progress: bool = False):
    """Train a copy of ``tower`` + a head; returns (model, target mean, target std, loss history)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SpotRegressor(copy.deepcopy(tower).requires_grad_(True), targets.shape[1]).train()
    mean, std = targets.mean(0), targets.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    y = torch.from_numpy(((targets - mean) / std).astype(np.float32))
    x = as_uint8_batch(images)
    optimizer = torch.optim.AdamW([{"params": model.tower.parameters(), "lr": lr},
                                   {"params": model.head.parameters(), "lr": head_lr}], weight_decay=0.01)
    from tqdm.auto import tqdm

    history = []
    bar = tqdm(total=epochs * len(x), unit="spot", desc="finetune", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for i in range(0, len(x), batch_size):
            idx = order[i: i + batch_size]
            loss = nn.functional.mse_loss(model(_augment(x[idx], generator)), y[idx])
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
def predict_finetuned(model: SpotRegressor, mean: np.ndarray, std: np.ndarray, images: np.ndarray) -> np.ndarray:
    x = as_uint8_batch(images)
    z = torch.cat([model(x[i: i + 128]) for i in range(0, len(x), 128)]).numpy()
    return z * std + mean
