"""Embeddings: timestep (DiT's sinusoid + MLP), patches (conv), fixed 2-D sin-cos positions,
condition-token projections and the per-entry tokeniser for vector modalities."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f), sin(t f)]``, ``f_i = max_period^(-i / (dim/2 - freq_shift))``.

    ``freq_shift=0`` is DiT/SiT; ``freq_shift=1`` is diffusers' ``Timesteps(downscale_freq_shift=1)``
    used by ``DiTTransformer2DModel``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (B, D); the sinusoid sees ``t * time_scale``."""

    def __init__(self, hidden_size: int, time_scale: float = 1000.0, freq_shift: float = 0.0, frequency_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.freq_shift = freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """In fp32 whatever the surrounding autocast (bf16 cannot tell t = 0.500 from 0.502, and the
        sinusoid of ``1000 t`` amplifies that); the MLP runs in its weights' dtype. Costs (B, D)."""
        freq = timestep_embedding(t.float() * self.time_scale, self.frequency_size, freq_shift=self.freq_shift)
        with torch.autocast(t.device.type, enabled=False):
            return self.mlp(freq.to(self.mlp[0].weight.dtype))


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, N, D) with a strided conv. Channels beyond ``in_channels`` (source latents
    for translation fine-tunes) start with zero weights, so adding them leaves the output unchanged."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, extra_in_channels: int = 0):
        super().__init__()
        self.in_channels = in_channels
        self.extra_in_channels = extra_in_channels
        self.proj = nn.Conv2d(in_channels + extra_in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """DiT's fixed 2-D sin-cos embedding, (grid_h * grid_w, dim), row-major over (h, w).

    Half the channels encode the column (w) coordinate, half the row (h), as in DiT/MAE
    (``get_2d_sincos_pos_embed``), computed in float64 then cast to float32.
    """
    assert dim % 4 == 0, "hidden_size must be divisible by 4 for the 2-D sin-cos embedding"
    hh, ww = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64, device=device),
        torch.arange(grid_w, dtype=torch.float64, device=device),
        indexing="ij",
    )

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_axis(ww), one_axis(hh)], dim=1).float()


class ConditionProjector(nn.Module):
    """Condition tokens of any width -> model width (one Linear per modality)."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


class VectorTokenizer(nn.Module):
    """A vector of scalars (B, n) -> n tokens (B, n, D) with ``token_i = x_i * e_i + b_i``.

    Each entry (e.g. one pathway score) owns a learned direction ``e_i`` and offset ``b_i``, so the
    token says both *which* entry it is and *how much*.
    """

    def __init__(self, num_entries: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_entries, hidden_size))
        self.bias = nn.Parameter(torch.empty(num_entries, hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)
        nn.init.normal_(self.bias, std=0.02)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.weight.dtype)[..., None] * self.weight + self.bias
