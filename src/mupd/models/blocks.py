"""The transformer block (DiT's adaLN-Zero block + cross-modal attention) and the final layer.

Numerically a block with no conditions is exactly DiT's: LayerNorm(eps 1e-6, no affine), adaLN
modulation ``SiLU -> Linear(D, 6D)`` chunked as (shift, scale, gate) for attention then MLP, GELU-tanh
MLP. Parameter names follow DiT (``attn.qkv``, ``mlp.fc1``, ``adaLN_modulation.1``) so public DiT/SiT
checkpoints map one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import ConditionTokens, DecoupledCrossAttention, SelfAttention, SharedCrossAttention, modulate


class Mlp(nn.Module):
    """DiT's MLP; with ``conv`` a depthwise 3x3 convolution over the token grid follows ``fc1``
    (SANA's Mix-FFN), so neighbouring patches mix from the first step instead of only once
    attention has learnt to be local. Tokens past the grid (a CLS token) skip the convolution."""

    def __init__(self, dim: int, hidden: int, conv: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if conv else None
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] = (0, 0)) -> torch.Tensor:
        h = self.fc1(x)
        if self.conv is not None:
            gh, gw = grid
            n = gh * gw
            img = h[:, :n].transpose(1, 2).reshape(h.shape[0], -1, gh, gw)
            img = self.conv(img).flatten(2).transpose(1, 2)
            h = torch.cat([img, h[:, n:]], dim=1) if h.shape[1] > n else img
        return self.fc2(self.act(h))


class MuPDBlock(nn.Module):
    """self-attention -> cross-modal attention (one stream per modality present) -> MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, modalities: tuple[str, ...], attention: str, conv_mlp: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), conv_mlp)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.cross = None
        if modalities:
            cls = DecoupledCrossAttention if attention == "decoupled" else SharedCrossAttention
            self.cross = cls(dim, num_heads, modalities)

    def forward(self, x: torch.Tensor, c: torch.Tensor, conds: dict[str, ConditionTokens], scales: dict[str, float],
                grid: tuple[int, int] = (0, 0)) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        if self.cross is not None and conds:
            x = self.cross(x, c, conds, scales)
        x = torch.addcmul(x, gate_mlp.unsqueeze(1), self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp), grid))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> Linear to patch pixels; zero-initialised (DiT)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ClsHead(nn.Module):
    """REG-style CLS token: embedded encoder CLS in, its velocity out (zero-initialised head)."""

    def __init__(self, cls_dim: int, dim: int):
        super().__init__()
        self.embed = nn.Linear(cls_dim, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.out = nn.Linear(dim, cls_dim)
