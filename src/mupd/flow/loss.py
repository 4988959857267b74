"""The flow-matching objective, kept apart from any network (as SiT's ``transport/``), and the
per-sample condition dropout that trains the unconditional and per-modality branches for CFG."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MupdError
from .interpolant import interpolate, sample_time


def _rand(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def drop_conditions(conditions: dict | None, p_each: float = 0.1, p_all: float = 0.1, generator: torch.Generator | None = None) -> dict:
    """Per-sample dropout by mask zeroing: each modality is dropped with ``p_each``, all jointly with
    ``p_all``. Returns ``{m: (tokens, mask)}``; the batch stays one forward pass. A condition given
    without a mask gets a per-sample mask of shape (B,)."""
    if not conditions:
        return {}
    present = {k: v for k, v in conditions.items() if v is not None}
    if not present:
        return {}
    first = next(iter(present.values()))
    first = first[0] if isinstance(first, (tuple, list)) else first
    B, device = first.shape[0], first.device
    keep_all = _rand(B, generator, device) >= p_all
    out = {}
    for name, value in present.items():
        tokens, mask = value if isinstance(value, (tuple, list)) else (value, None)
        if tokens.shape[0] != B:
            raise MupdError(f"drop_conditions: conditions[{name!r}] has batch {tokens.shape[0]}, others {B}")
        keep = keep_all & (_rand(B, generator, device) >= p_each)
        if mask is None:
            mask = keep
        else:
            mask = mask.to(device).bool()
            mask = mask & (keep if mask.ndim == 1 else keep[:, None])
        out[name] = (tokens, mask)
    return out


def flow_matching_loss(
    model,
    x0: torch.Tensor,
    conditions: dict | None = None,
    *,
    time_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    cls: torch.Tensor | None = None,
    cls_weight: float = 0.03,
    extra_input: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    cls_noise: torch.Tensor | None = None,
    reduction: str = "mean",
    return_extras: bool = False,
):
    """MSE between the network's velocity and ``eps - x0`` at ``x_t = (1 - t) x0 + t eps``.

    ``model(x_t, t, conditions)`` may be any network with that call. ``cls`` (B, cls_dim): a clean
    encoder CLS vector noised with the same t and denoised alongside (REG); its velocity MSE is added
    with ``cls_weight``. ``extra_input`` (source latents) is concatenated after ``x_t``. ``t``,
    ``noise`` and ``cls_noise`` may be given (the trainer draws them for the whole global batch);
    otherwise they are drawn from ``generator``. ``reduction="none"`` returns per-sample losses (B,).
    With ``return_extras`` returns ``(loss, extras)``; extras has the model's extras (``hidden`` for
    REPA) plus ``t``, ``loss_v`` and ``loss_cls`` (reduced like the loss, detached).
    """
    if reduction not in ("mean", "none"):
        raise MupdError(f"flow_matching_loss: reduction must be 'mean' or 'none', not {reduction!r}")
    B = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    if t is None:
        t = sample_time(B, time_sampling, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    x_t, target = interpolate(x0, noise, t)
    model_in = x_t if extra_input is None else torch.cat([x_t, extra_input.to(x_t.dtype)], dim=1)
    want_extras = return_extras or cls is not None
    kwargs = {}
    if cls is not None:
        if cls_noise is None:
            cls_noise = torch.randn(cls.shape, generator=generator, device=gen_device, dtype=cls.dtype).to(cls.device)
        cls_t, cls_target = interpolate(cls, cls_noise, t)
        kwargs["cls"] = cls_t
    if want_extras:
        v, extras = model(model_in, t, conditions, return_extras=True, **kwargs)
        extras = dict(extras)
    else:
        v, extras = model(model_in, t, conditions), {}
    loss_v = _mse(v, target, reduction)
    loss = loss_v
    if cls is not None:
        loss_cls = _mse(extras["cls_v"], cls_target, reduction)
        loss = loss + cls_weight * loss_cls
        extras["loss_cls"] = loss_cls.detach()
    if not return_extras:
        return loss
    extras.update(t=t, loss_v=loss_v.detach())
    return loss, extras


def _mse(pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """Mean squared error in fp32, over everything or per sample (B,)."""
    if reduction == "mean":
        return F.mse_loss(pred.float(), target.float())
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
