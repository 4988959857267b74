"""Classifier-free guidance over modalities, every branch in ONE batched forward.

Joint: ``v = v(none) + s (v(all) - v(none))``. Per modality (``guidance={m: s_m}``):
``v = v(base) + sum_m s_m (v(base + m) - v(base))``, where *base* is the present modalities that
have no guidance scale (they stay on in every branch; with all modalities guided, base = nothing).
Branches are stacked along the batch as contiguous blocks of B rows, and a modality is on in a
contiguous run of them, so for MuPD each stream gets a :class:`~mupd.models.inputs.ConditionRows`
and computes on its own rows only (an absent stream elsewhere: exactly zero, at no cost). Other
networks get the stacked form with all-False masks in the rows where a modality is off, which
equals separate forwards too. The branches are combined in fp32 (the forward may run under bf16
autocast), so the guided velocity is fp32.
"""

from __future__ import annotations

import torch

from ..errors import MupdError
from ..models.inputs import ConditionRows


def _split(value):
    return value if isinstance(value, (tuple, list)) else (value, None)


def _branch_run(name: str, branches: list[set[str]]) -> tuple[int, int] | None:
    """(first, last + 1) of the branches that include ``name`` when they are contiguous, else None."""
    on = [k for k, b in enumerate(branches) if name in b]
    return (on[0], on[-1] + 1) if on == list(range(on[0], on[-1] + 1)) else None


def branch_conditions(conditions: dict, branches: list[set[str]], batch_size: int, *, rows: bool = False) -> dict:
    """Stack ``len(branches)`` copies of ``conditions`` along the batch; in copy k only the
    modalities in ``branches[k]`` are switched on. ``rows=True`` (for MuPD): a modality on in a
    contiguous run of branches becomes ``ConditionRows`` for those rows (its tokens are not
    repeated); otherwise its masks are all False in the copies where it is off."""
    out = {}
    n = len(branches)
    for name, value in conditions.items():
        if not any(name in b for b in branches):
            continue
        tokens, mask = _split(value)
        run = _branch_run(name, branches) if rows else None
        if run is not None and run != (0, n):  # (on in every branch: the stacked form below)
            out[name] = ConditionRows(tokens, mask, run[0] * batch_size, run[1] * batch_size)
            continue
        if tokens.shape[0] == 1 and batch_size > 1:
            tokens = tokens.expand(batch_size, *tokens.shape[1:])
        base = torch.ones(batch_size, dtype=torch.bool, device=tokens.device) if mask is None else mask.to(tokens.device).bool()
        if base.shape[0] == 1 and batch_size > 1:
            base = base.expand(batch_size, *base.shape[1:])
        masks = [base if name in b else torch.zeros_like(base) for b in branches]
        out[name] = (tokens.repeat(n, *([1] * (tokens.ndim - 1))), torch.cat(masks, dim=0))
    return out


class GuidancePlan:
    """The branches and weights for one guidance setting, with the stacked conditions built once.

    ``prepare=True`` (samplers, under no_grad) encodes the conditions once through
    ``model.prepare_conditions`` so keys/values are reused across steps."""

    def __init__(self, model, conditions: dict | None, guidance, batch_size: int, *, prepare: bool = False):
        conditions = {k: v for k, v in (conditions or {}).items() if v is not None}
        present = set(conditions)
        self.batch_size = batch_size
        if guidance is None or not present or (not isinstance(guidance, dict) and float(guidance) == 1.0):
            branches, self.weights = [present], []
        elif isinstance(guidance, dict):
            unknown = set(guidance) - present
            if unknown:
                raise MupdError(f"guidance given for {sorted(unknown)} but no such condition was passed (present: {sorted(present)})")
            guided = [m for m in conditions if m in guidance]
            base = present - set(guided)
            branches = [base] + [base | {m} for m in guided]
            self.weights = [float(guidance[m]) for m in guided]
        else:
            branches, self.weights = [set(), present], [float(guidance)]
        self.num_branches = len(branches)
        if self.num_branches == 1:
            self.conditions = conditions
        else:
            rows = getattr(model, "accepts_condition_rows", False)
            self.conditions = branch_conditions(conditions, branches, batch_size, rows=rows)
        if prepare and self.conditions and hasattr(model, "prepare_conditions"):
            self.conditions = model.prepare_conditions(self.conditions, batch_size * self.num_branches)

    def velocity(self, model, x: torch.Tensor, t: torch.Tensor, *, scales=None, cls: torch.Tensor | None = None):
        n = self.num_branches
        kwargs = {"scales": scales} if scales else {}
        xb = x if n == 1 else x.repeat(n, *([1] * (x.ndim - 1)))
        tb = t if n == 1 else t.repeat(n)
        if cls is None:
            out, cls_out = model(xb, tb, self.conditions, **kwargs), None
        else:
            out, extras = model(xb, tb, self.conditions, cls=cls if n == 1 else cls.repeat(n, 1), return_extras=True, **kwargs)
            cls_out = extras["cls_v"]
        v = self._combine(out)
        return v if cls is None else (v, self._combine(cls_out))

    def _combine(self, out: torch.Tensor) -> torch.Tensor:
        if self.num_branches == 1:
            return out
        # in fp32 even under bf16 autocast: v(c) - v(base) is small and the scale amplifies its rounding
        parts = out.float().chunk(self.num_branches, dim=0)
        result = parts[0]
        for w, part in zip(self.weights, parts[1:]):
            result = result + w * (part - parts[0])
        return result


def guided_velocity(model, x: torch.Tensor, t, conditions: dict | None, guidance=None, *, scales=None, cls: torch.Tensor | None = None):
    """Guided velocity at (x, t). ``guidance``: None (plain conditional), a float (joint) or
    ``{modality: scale}``. Returns ``v``, or ``(v, cls_v)`` when ``cls`` is given."""
    B = x.shape[0]
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    t = t.reshape(1).expand(B) if t.numel() == 1 else t
    return GuidancePlan(model, conditions, guidance, B).velocity(model, x, t, scales=scales, cls=cls)
