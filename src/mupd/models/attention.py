"""Attention: self-attention over image tokens, and the cross-modal attention that reads condition
tokens, in its decoupled form (one stream per modality, DESIGN §2) and its shared ablation.

All attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-
efficient kernels on CUDA). A condition is a :class:`ConditionTokens`: tokens already at model width,
an SDPA mask (only for a per-token mask; None when no mask was given, which keeps the fast kernels)
and a per-sample ``keep`` multiplier that is 0 for samples whose mask row is all False, so those
samples get exactly zero (not NaN) from the stream. Both are built from the mask as tensors, with
no host sync and no branch on mask values, so the forward compiles to one graph.
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

    tokens: torch.Tensor | None  # (b, L, D) at model width; None for a factored vector modality
    attn_mask: torch.Tensor | None  # (b, 1, 1, L) bool, True = attend; None = attend to all
    keep: torch.Tensor | None  # (b, 1, 1) 0/1 in the model dtype; None = every sample kept
    cache: dict | None = None  # CrossAttention module -> its (k, v); None = no caching
    # a vector modality kept factored: token_i = values_i * weight_i + bias_i, so a linear map of the
    # tokens is values_i * (W weight_i) + (W bias_i + c): computed per entry, not per sample and entry
    vector: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # values (b, n), weight, bias (n, D)
    rows: tuple[int, int] | None = None  # applies to batch rows start:stop only (b = stop - start); None = all

    @staticmethod
    def build(tokens: torch.Tensor | None, mask: torch.Tensor | None, dtype: torch.dtype = torch.float32,
              vector=None, rows: tuple[int, int] | None = None) -> "ConditionTokens":
        """``mask``: (b, L) or (b,) bool, or None. A per-sample (b,) mask, or one over a single
        token, needs no attention mask, only ``keep``. For a per-token mask, rows with no real token
        attend to everything (finite) and are zeroed afterwards through ``keep``."""
        if mask is None:
            return ConditionTokens(tokens, None, None, vector=vector, rows=rows)
        if mask.ndim == 2 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim == 1:
            return ConditionTokens(tokens, None, mask.to(dtype)[:, None, None], vector=vector, rows=rows)
        has_any = mask.any(dim=1)
        safe = mask | ~has_any[:, None]
        return ConditionTokens(tokens, safe[:, None, None, :], has_any.to(dtype)[:, None, None], vector=vector, rows=rows)

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1] if self.tokens is not None else self.vector[1].shape[0]

    def token_mask(self) -> torch.Tensor | None:
        """(b, L) bool of the tokens a sample may attend to (dropped samples: none); None = all."""
        if self.attn_mask is None and self.keep is None:
            return None
        b, L = self.materialise_shape()
        mask = torch.ones(b, L, dtype=torch.bool, device=self.device)
        if self.attn_mask is not None:
            mask = mask & self.attn_mask[:, 0, 0, :]
        if self.keep is not None:
            mask = mask & self.keep[:, 0, :].bool()
        return mask

    def materialise_shape(self) -> tuple[int, int]:
        batch = self.tokens.shape[0] if self.tokens is not None else self.vector[0].shape[0]
        return batch, self.num_tokens

    @property
    def device(self) -> torch.device:
        return (self.tokens if self.tokens is not None else self.vector[0]).device

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

    def keys_values(self, cond: ConditionTokens, dtype: torch.dtype) -> torch.Tensor:
        """(b, L, 2D) keys and values, from the K/V cache when the conditions are prepared."""
        kv = None if cond.cache is None else cond.cache.get(self)
        if kv is None:
            kv = cond.project(self.kv).to(dtype)
            if cond.cache is not None:
                cond.cache[self] = kv
        return kv

    def forward(self, x: torch.Tensor, cond: ConditionTokens) -> torch.Tensor:
        """(b, N, D) queries -> (b, N, D); (b, 1, D) for a one-token condition (the same for every
        query). ``cond.keep`` is not applied here: :class:`CrossStream` folds it into its gate."""
        B, N, D = x.shape
        h = self.num_heads
        if cond.num_tokens == 1:
            return self.single_token(cond, x.dtype)
        q = self.q(x).view(B, N, h, D // h).transpose(1, 2)
        kv = self.keys_values(cond, q.dtype)
        k, v = kv.view(B, kv.shape[1], 2, h, D // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=cond.attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))

    def single_token(self, cond: ConditionTokens, dtype: torch.dtype) -> torch.Tensor:
        """Softmax over one key is exactly 1, so every query reads that token's value: the output is
        ``proj(v)`` per sample, with no query projection and no attention over the image tokens."""
        v = self.keys_values(cond, dtype)[..., self.proj.in_features :]
        out = self.proj(v)
        # q gets an exact zero gradient, as through a one-key softmax, so DDP sees every parameter used
        return out + 0.0 * (self.q.weight.sum() + self.q.bias.sum()).to(out.dtype)


class CrossStream(nn.Module):
    """One modality's stream: its own adaLN (shift, scale, gate; zero-initialised so a fresh model
    ignores the condition) and its own cross-attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.attn = CrossAttention(dim, num_heads)

    def gated(self, normed: torch.Tensor, c: torch.Tensor, cond: ConditionTokens) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate, attention output); the stream's contribution is their product. The per-sample
        ``keep`` is folded into the (b, 1, D) gate rather than multiplied over every token."""
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
        gate = gate.unsqueeze(1)
        if cond.keep is not None:
            gate = gate * cond.keep.to(gate.dtype)
        if cond.num_tokens == 1:  # the queries do not matter (see CrossAttention.single_token)
            return gate, self.attn(normed, cond)
        return gate, self.attn(modulate(normed, shift, scale), cond)

    def forward(self, normed: torch.Tensor, c: torch.Tensor, cond: ConditionTokens) -> torch.Tensor:
        gate, out = self.gated(normed, c, cond)
        return gate * out


def add_gated(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, rows: tuple[int, int] | None) -> torch.Tensor:
    """``x + gate * out`` (one fused pass) where gate and out cover batch rows ``rows`` only (all when None)."""
    if rows is None:
        return torch.addcmul(x, gate, out)
    start, stop = rows
    return torch.cat([x[:start], torch.addcmul(x[start:stop], gate, out), x[stop:]], dim=0)


class DecoupledCrossAttention(nn.Module):
    """``h + sum_m lambda_m * g_m * CrossAttn_m(modulate(LN(h)), C_m)`` over the modalities present.

    Absent modalities (and lambda_m = 0) are skipped (not computed), so their contribution is exactly
    zero; a condition for some batch rows only (``ConditionTokens.rows``) is computed on those rows.
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
            scale = scales.get(name, 1.0)
            if scale == 0.0:
                continue
            if cond.rows is None:
                gate, out = self.streams[name].gated(normed, c, cond)
            else:
                start, stop = cond.rows
                gate, out = self.streams[name].gated(normed[start:stop], c[start:stop], cond)
            x = add_gated(x, gate if scale == 1.0 else scale * gate, out, cond.rows)
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
            joint = self.join(conds, x.shape[0])
            if first.cache is not None:
                first.cache[self] = joint
        return x + self.stream(self.norm(x), c, joint)

    def join(self, conds: dict[str, ConditionTokens], batch_size: int) -> ConditionTokens:
        """All modalities' tokens side by side, for every batch row (a condition for some rows only
        is padded with masked-out rows)."""
        tokens, masks = [], []
        masked = any(cond.token_mask() is not None or cond.rows is not None for cond in conds.values())
        for name, cond in conds.items():
            full = cond.materialise() + self.modality_embed[name]
            b, L = full.shape[:2]
            mask = cond.token_mask()
            if masked and mask is None:
                mask = torch.ones(b, L, dtype=torch.bool, device=full.device)
            if cond.rows is not None:
                start, stop = cond.rows
                full = torch.cat([full.new_zeros(start, L, full.shape[2]), full, full.new_zeros(batch_size - stop, L, full.shape[2])])
                mask = torch.cat([mask.new_zeros(start, L), mask, mask.new_zeros(batch_size - stop, L)])
            tokens.append(full)
            masks.append(mask)
        joint_mask = torch.cat(masks, dim=1) if masked else None
        joint = ConditionTokens.build(torch.cat(tokens, dim=1), joint_mask, tokens[0].dtype)
        if next(iter(conds.values())).cache is not None:  # prepared conditions: cache K/V too
            joint.cache = {}
        return joint
