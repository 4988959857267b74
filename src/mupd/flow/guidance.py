"""Classifier-free guidance over modalities, every branch in ONE batched forward.

Joint: ``v = v(none) + s (v(all) - v(none))``. Per modality (``guidance={m: s_m}``):
``v = v(base) + sum_m s_m (v(base + m) - v(base))``, where *base* is the present modalities that
have no guidance scale (they stay on in every branch; with all modalities guided, base = nothing).
Branches are stacked along the batch and told apart by per-sample masks: an all-False mask row is
exactly an absent stream, so the batched result equals separate forwards.
"""

from __future__ import annotations

import torch

from ..errors import MupdError


def _split(value):
    return value if isinstance(value, (tuple, list)) else (value, None)


def branch_conditions(conditions: dict, branches: list[set[str]], batch_size: int) -> dict:
    """Stack ``len(branches)`` copies of ``conditions`` along the batch; in copy k only the
    modalities in ``branches[k]`` are switched on (their masks elsewhere are all False)."""
    out = {}
    n = len(branches)
    for name, value in conditions.items():
        if not any(name in b for b in branches):
            continue
        tokens, mask = _split(value)
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens = tokens.expand(batch_size, *tokens.shape[1:])
        base = torch.ones(batch_size, dtype=torch.bool, device=tokens.device) if mask is None else mask.to(tokens.device).bool()
        if base.shape[0] == 1 and batch_size > 1:
            base = base.expand(batch_size, *base.shape[1:])
        masks = [base if name in b else torch.zeros_like(base) for b in branches]
        out[name] = (tokens.repeat(n, *([1] * (tokens.ndim - 1))), torch.cat(masks, dim=0))
    return out


def guided_velocity(model, x: torch.Tensor, t, conditions: dict | None, guidance=None, *, scales=None, cls: torch.Tensor | None = None):
    """Guided velocity at (x, t). ``guidance``: None (plain conditional), a float (joint) or
    ``{modality: scale}``. Returns ``v``, or ``(v, cls_v)`` when ``cls`` is given."""
    conditions = {k: v for k, v in (conditions or {}).items() if v is not None}
    B = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    t = t.reshape(1).expand(B) if t.numel() == 1 else t
    kwargs = {"scales": scales} if scales else {}

    def run(xb, tb, cond, clsb):
        if clsb is None:
            return model(xb, tb, cond, **kwargs), None
        out, extras = model(xb, tb, cond, cls=clsb, return_extras=True, **kwargs)
        return out, extras["cls_v"]

    present = set(conditions)
    if guidance is None or not present or (not isinstance(guidance, dict) and float(guidance) == 1.0):
        v, cls_v = run(x, t, conditions, cls)
        return v if cls is None else (v, cls_v)

    if isinstance(guidance, dict):
        unknown = set(guidance) - present
        if unknown:
            raise MupdError(f"guidance given for {sorted(unknown)} but no such condition was passed (present: {sorted(present)})")
        guided = [m for m in conditions if m in guidance]
        base = present - set(guided)
        branches = [base] + [base | {m} for m in guided]
        weights = [float(guidance[m]) for m in guided]
    else:
        branches = [set(), present]
        weights = [float(guidance)]

    n = len(branches)
    cond = branch_conditions(conditions, branches, B)
    xb = x.repeat(n, *([1] * (x.ndim - 1)))
    clsb = None if cls is None else cls.repeat(n, 1)
    v_all, cls_all = run(xb, t.repeat(n), cond, clsb)

    def combine(out):
        parts = out.chunk(n, dim=0)
        result = parts[0]
        for w, part in zip(weights, parts[1:]):
            result = result + w * (part - parts[0])
        return result

    v = combine(v_all)
    return v if cls is None else (v, combine(cls_all))
