"""Representation alignment (notes 2.6): a small conv projector maps the tokens after block
``align.block`` to a frozen image encoder's patch features (cosine loss, iREPA-style spatially
centred targets), and the encoder's CLS token is noised and denoised alongside the latents
through the model's ``cls=`` input (REG).

Targets are computed once per training image by the frozen encoder (``encoder_targets``) and kept
with the data, so the encoder never runs inside the training step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import MupdError


class ConvProjector(nn.Module):
    """(B, N, D) transformer tokens on a square grid -> (B, E, g, g) feature map."""

    def __init__(self, hidden_size: int, out_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(hidden_size, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, out_dim, 3, padding=1),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise MupdError(f"alignment needs a square token grid, got {n} tokens")
        return self.net(tokens.transpose(1, 2).reshape(b, d, side, side))


def split_tokens(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder tokens (B, L, E) -> (patch tokens on the largest square grid at the end, CLS).

    ViTs emit [CLS, (registers), patches]; the first token is the CLS when L is not a square."""
    length = tokens.shape[1]
    side = math.isqrt(length)
    if side * side == length:
        return tokens, tokens.mean(1)
    patches = tokens[:, length - side * side:]
    return patches, tokens[:, 0]


@torch.no_grad()
def encoder_targets(encoder, pixels: torch.Tensor, batch_size: int = 32, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pixels (N, 3, H, W) -> (patch features (N, g*g, E), CLS (N, E)), float32 CPU."""
    patches, cls = [], []
    for start in tqdm(range(0, len(pixels), batch_size), desc="alignment targets", disable=not progress, leave=False):
        tokens, _ = encoder.encode(pixels[start:start + batch_size].to(encoder.device))
        p, c = split_tokens(tokens.float())
        patches.append(p.cpu())
        cls.append(c.cpu())
    patches, cls = torch.cat(patches), torch.cat(cls)
    # standardise the CLS so its noising matches the unit-variance latent interpolant
    cls = (cls - cls.mean(0)) / cls.std(0).clamp_min(1e-6)
    return patches, cls


def alignment_loss(projector: ConvProjector, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - cosine between projected tokens and spatially centred encoder patches (B,)."""
    pred = projector(hidden.float())  # (B, E, g, g)
    b, e = pred.shape[:2]
    side = math.isqrt(target.shape[1])
    if pred.shape[-1] != side:
        pred = F.interpolate(pred, size=(side, side), mode="bilinear", align_corners=False)
    pred = pred.flatten(2).transpose(1, 2)  # (B, g*g, E)
    target = target - target.mean(1, keepdim=True)
    cos = F.cosine_similarity(pred, target.to(pred), dim=-1)  # (B, g*g)
    return (1.0 - cos).mean(1)
