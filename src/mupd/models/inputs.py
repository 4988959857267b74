"""Input checks for :class:`~mupd.models.mupd.MuPD`, run once at the edge (pipelines, samplers, the
trainer's first step), never inside ``forward``: they read tensor values (NaN checks), which is a
host sync per call and a graph break under ``torch.compile``.

Also the one extra condition form the model accepts, :class:`ConditionRows`: a condition that
applies to a contiguous block of the batch only (batched classifier-free guidance), so its stream
computes on those rows alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import MupdError


@dataclass(frozen=True)
class ConditionRows:
    """``tokens`` (and ``mask``, as in the plain form) for batch rows ``start:stop`` only; the other
    rows get nothing from this stream (as if the modality were absent for them) and cost nothing."""

    tokens: torch.Tensor
    mask: torch.Tensor | None
    start: int
    stop: int


def split_condition(value, batch_size: int):
    """``value`` -> (tokens, mask, rows); rows is ``(start, stop)`` or None for the whole batch."""
    if isinstance(value, ConditionRows):
        if value.start == 0 and value.stop == batch_size:
            return value.tokens, value.mask, None
        return value.tokens, value.mask, (value.start, value.stop)
    if isinstance(value, (tuple, list)):
        return value[0], value[1], None
    return value, None, None


def check_inputs(model, x, t, conditions=None, *, scales=None, cls=None) -> None:
    """Raise :class:`MupdError` naming the field when ``model(x, t, conditions, scales=, cls=)``
    would fail or silently compute garbage (wrong shapes, NaN/inf conditions, unknown modalities)."""
    from .mupd import PreparedConditions

    cfg = model.config
    if not torch.is_tensor(x) or x.ndim != 4:
        raise MupdError(f"latents must be a (B, C, H, W) tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    B, C, H, W = x.shape
    if C != cfg.in_channels + cfg.extra_in_channels:
        raise MupdError(f"latents have {C} channels; the model expects {cfg.in_channels} (+{cfg.extra_in_channels} extra input channels)")
    p = cfg.patch_size
    if H % p or W % p:
        raise MupdError(f"latent size {H}x{W} is not divisible by the patch size {p}")
    t = torch.as_tensor(t)
    if not (t.ndim == 0 or t.numel() == 1 or tuple(t.shape) == (B,)):
        raise MupdError(f"t must be a scalar or shape ({B},), got {tuple(t.shape)}")
    if isinstance(conditions, PreparedConditions):
        check_prepared(conditions, B)
    else:
        check_conditions(cfg, conditions, B)
    check_scales(cfg, scales)
    if cls is not None:
        if model.cls_head is None:
            raise MupdError("cls= was given but the model has no CLS token (set cls_dim in the config)")
        if tuple(cls.shape) != (B, cfg.cls_dim):
            raise MupdError(f"cls must have shape ({B}, {cfg.cls_dim}), got {tuple(cls.shape)}")


def check_prepared(conditions, batch_size: int) -> None:
    """Prepared conditions hold a K/V cache for one batch size, valid only without gradients."""
    if conditions.batch_size != batch_size:
        raise MupdError(f"prepared conditions are for batch size {conditions.batch_size}, the latents have {batch_size}")
    if torch.is_grad_enabled():
        raise MupdError("prepared conditions cache keys/values; use them under torch.no_grad() (sampling), not for training")


def check_conditions(cfg, conditions, batch_size: int) -> None:
    if conditions is None:
        return
    if not isinstance(conditions, Mapping):
        raise MupdError(f"conditions must be a dict {{modality: tokens | (tokens, mask)}}, not {type(conditions).__name__}")
    for name, value in conditions.items():
        if value is None:
            continue
        if name not in cfg.modalities:
            raise MupdError(f"conditions[{name!r}]: this model has no {name!r} stream; its modalities are {list(cfg.modalities)}")
        tokens, mask, rows = split_condition(value, batch_size)
        rows_b = batch_size
        if rows is not None:
            start, stop = rows
            if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= batch_size):
                raise MupdError(f"conditions[{name!r}]: rows {start}:{stop} are not a block of the batch of {batch_size}")
            rows_b = stop - start
        length = check_tokens(cfg, name, tokens, rows_b)
        check_mask(name, mask, rows_b, length)


def check_tokens(cfg, name: str, tokens, batch_size: int) -> int:
    """Check one modality's tokens; returns the number of tokens (entries for a vector modality)."""
    if not torch.is_tensor(tokens) or not tokens.is_floating_point():
        raise MupdError(f"conditions[{name!r}]: expected a float tensor, got {type(tokens).__name__} {getattr(tokens, 'dtype', '')}")
    if name in cfg.vector_modalities:
        n = cfg.vector_modalities[name]
        if tokens.ndim != 2 or tokens.shape[1] != n:
            raise MupdError(f"conditions[{name!r}]: expected a (B, {n}) vector of scalars, got shape {tuple(tokens.shape)}")
    else:
        if tokens.ndim == 2:
            tokens = tokens[:, None]
        width = cfg.cond_dims[name]
        if tokens.ndim != 3 or tokens.shape[-1] != width:
            raise MupdError(
                f"conditions[{name!r}]: expected tokens (B, L, {width}) or (B, {width}), got shape {tuple(tokens.shape)}; "
                f"the model was built with cond_dims[{name!r}]={width}"
            )
    if tokens.shape[0] != batch_size and not tokens.shape[0] == 1:
        raise MupdError(f"conditions[{name!r}]: batch size {tokens.shape[0]} does not match the latents' {batch_size}")
    if not bool(torch.isfinite(tokens).all()):
        raise MupdError(f"conditions[{name!r}] contains NaN or inf; clean the input (e.g. impute missing expression) first")
    return tokens.shape[1]


def check_mask(name: str, mask, batch_size: int, length: int) -> None:
    if mask is None:
        return
    if not torch.is_tensor(mask):
        raise MupdError(f"conditions[{name!r}]: the mask must be a bool tensor, got {type(mask).__name__}")
    rows = mask.shape[0] if mask.ndim else 0
    shape_ok = mask.ndim == 1 or (mask.ndim == 2 and mask.shape[1] == length)
    if not shape_ok or rows not in (1, batch_size):
        raise MupdError(f"conditions[{name!r}]: mask shape {tuple(mask.shape)} does not match tokens ({batch_size}, {length}) or ({batch_size},)")


def check_scales(cfg, scales) -> dict[str, float]:
    """``{modality: lambda_m}`` -> floats; unknown modalities, or a scale other than 1 on the shared
    ablation (one stream for all modalities), are errors."""
    scales = dict(scales or {})
    for name, value in scales.items():
        if name not in cfg.modalities:
            raise MupdError(f"scales[{name!r}]: unknown modality; this model has {list(cfg.modalities)}")
        if cfg.attention == "shared" and float(value) != 1.0:
            raise MupdError("per-modality scales need attention='decoupled'; the shared ablation has one stream")
    return {k: float(v) for k, v in scales.items()}
