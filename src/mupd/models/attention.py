"""Attention: self-attention over image tokens, and the cross-modal attention that reads condition
tokens, in its decoupled form (one stream per modality, DESIGN §2) and its shared ablation.

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-
efficient kernels on CUDA). A condition is a :class:`ConditionTokens`: tokens already at model width,
an SDPA mask (None when every token is real, which keeps the fast kernels) and a per-sample ``keep``
multiplier that is 0 for samples whose mask row is all False, so those samples get exactly zero
(not NaN) from the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in one fused kernel (per-sample shift/scale over all tokens)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


@dataclass
class ConditionTokens:
    """One modality's condition, ready for attention (built once per forward by the model, or once
    per sampling run by ``MuPD.prepare_conditions``, which adds a K/V cache: the conditions do not
    change between sampling steps, so each block's key/value projections are computed once)."""

    tokens: torch.Tensor | None  # (B, L, D) at model width; None for a factored vector modality
    attn_mask: torch.Tensor | None  # (B, 1, 1, L) bool, True = attend; None = attend to all
    keep: torch.Tensor | None  # (B, 1, 1) 0/1; None = every sample kept
    cache: dict | None = None  # CrossAttention module -> its (k, v); None = no caching
    # a vector modality kept factored: token_i = values_i * weight_i + bias_i, so a linear map of the
    # tokens is values_i * (W weight_i) + (W bias_i + c): computed per entry, not per sample and entry
    vector: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # values (B, n), weight, bias (n, D)

    @staticmethod
    def build(tokens: torch.Tensor | None, mask: torch.Tensor | None, vector=None) -> "ConditionTokens":
        """``mask`` (B, L) bool or None. Rows with no real token attend to everything (finite) and are
        zeroed afterwards through ``keep``."""
        if mask is None or bool(mask.all()):
            return ConditionTokens(tokens, None, None, vector=vector)
        has_any = mask.any(dim=1)
        safe = mask | ~has_any[:, None]
        keep = None if bool(has_any.all()) else has_any[:, None, None]
        attn_mask = None if bool(safe.all()) else safe[:, None, None, :]
        return ConditionTokens(tokens, attn_mask, keep, vector=vector)

    def materialise(self) -> torch.Tensor:
        """The (B, L, D) tokens (built from the factored form when needed)."""
        if self.tokens is not None:
            return self.tokens
        values, weight, bias = self.vector
        return torch.addcmul(bias, values[..., None].to(weight.dtype), weight)

    def project(self, linear: nn.Linear) -> torch.Tensor:
        """``linear(tokens)`` -> (B, L, out); cheap for a factored vector modality."""
        if self.vector is None:
            return linear(self.tokens)
        values, weight, bias = self.vector
        per_value = F.linear(weight, linear.weight)  # (n, out)
        offset = F.linear(bias, linear.weight, linear.bias)  # (n, out)
        return torch.addcmul(offset, values[..., None].to(per_value.dtype), per_value)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (DiT layout: ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to condition tokens (keys/values); fused k/v projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cond: ConditionTokens) -> torch.Tensor:
        B, N, D = x.shape
        h = self.num_heads
        q = self.q(x).view(B, N, h, D // h).transpose(1, 2)
        kv = None if cond.cache is None else cond.cache.get(self)
        if kv is None:
            kv = cond.project(self.kv).to(q.dtype)
            kv = kv.view(B, kv.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
            if cond.cache is not None:
                cond.cache[self] = kv
        k, v = kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=cond.attn_mask)
        out = self.proj(out.transpose(1, 2).reshape(B, N, D))
        if cond.keep is not None:
            out = out * cond.keep.to(out.dtype)
        return out


class CrossStream(nn.Module):
    """One modality's stream: its own adaLN (shift, scale, gate; zero-initialised so a fresh model
    ignores the condition) and its own cross-attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.attn = CrossAttention(dim, num_heads)

    def forward(self, normed: torch.Tensor, c: torch.Tensor, cond: ConditionTokens) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
        return gate.unsqueeze(1) * self.attn(modulate(normed, shift, scale), cond)


class DecoupledCrossAttention(nn.Module):
    """``h + sum_m lambda_m * g_m * CrossAttn_m(modulate(LN(h)), C_m)`` over the modalities present.

    Absent modalities are skipped (not computed), so their contribution is exactly zero.
    """

    def __init__(self, dim: int, num_heads: int, modalities: tuple[str, ...]):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.streams = nn.ModuleDict({m: CrossStream(dim, num_heads) for m in modalities})

    def forward(self, x: torch.Tensor, c: torch.Tensor, conds: dict[str, ConditionTokens], scales: dict[str, float]) -> torch.Tensor:
        if not conds:
            return x
        normed = self.norm(x)  # shared by all streams
        for name, cond in conds.items():
            out = self.streams[name](normed, c, cond)
            scale = scales.get(name, 1.0)
            x = x + (out if scale == 1.0 else scale * out)
        return x


class SharedCrossAttention(nn.Module):
    """Ablation: one cross-attention over all condition tokens concatenated; a learned modality
    embedding is added to each modality's tokens so the stream can tell them apart."""

    def __init__(self, dim: int, num_heads: int, modalities: tuple[str, ...]):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.empty(dim)) for m in modalities})
        self.stream = CrossStream(dim, num_heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for param in self.modality_embed.values():
            nn.init.normal_(param, std=0.02)

    def forward(self, x: torch.Tensor, c: torch.Tensor, conds: dict[str, ConditionTokens], scales: dict[str, float]) -> torch.Tensor:
        if not conds:
            return x
        first = next(iter(conds.values()))
        joint = None if first.cache is None else first.cache.get(self)
        if joint is None:
            joint = self.join(conds)
            if first.cache is not None:
                first.cache[self] = joint
        return x + self.stream(self.norm(x), c, joint)

    def join(self, conds: dict[str, ConditionTokens]) -> ConditionTokens:
        tokens, masks = [], []
        for name, cond in conds.items():
            full = cond.materialise()
            tokens.append(full + self.modality_embed[name])
            B, L = full.shape[:2]
            mask = torch.ones(B, L, dtype=torch.bool, device=full.device)
            if cond.attn_mask is not None:
                mask = cond.attn_mask[:, 0, 0, :].clone()
            if cond.keep is not None:  # a dropped sample's tokens must not be attended to
                mask &= cond.keep[:, 0, :].bool()
            masks.append(mask)
        joint = ConditionTokens.build(torch.cat(tokens, dim=1), torch.cat(masks, dim=1))
        if next(iter(conds.values())).cache is not None:  # prepared conditions: cache K/V too
            joint.cache = {}
        return joint
