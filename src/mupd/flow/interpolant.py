"""The linear interpolant (MuPaD / REPA convention): ``x_t = (1 - t) x0 + t eps``, t = 1 is noise,
velocity ``v = eps - x0``; time sampling for training; and the score implied by a velocity."""

from __future__ import annotations

import torch

from ..errors import MupdError


def expand_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``x``."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_t, v_target)`` with ``x_t = (1 - t) x0 + t noise`` and ``v = noise - x0``."""
    if x0.shape != noise.shape:
        raise MupdError(f"interpolate: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    te = expand_t(t, x0)
    return (1 - te) * x0 + te * noise, noise - x0


def sample_time(
    batch_size: int,
    method: str = "uniform",
    *,
    generator: torch.Generator | None = None,
    device=None,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """Training times in [0, 1]: ``"uniform"`` or ``"logit_normal"`` (sigmoid of N(mean, std), SD3)."""
    gen_device = generator.device if generator is not None else device
    if method == "uniform":
        t = torch.rand(batch_size, generator=generator, device=gen_device)
    elif method == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch_size, generator=generator, device=gen_device))
    else:
        raise MupdError(f"time_sampling must be 'uniform' or 'logit_normal', not {method!r}")
    return t.to(device) if device is not None else t


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Score of the linear path: alpha = 1 - t, sigma = t gives ``s = -((1 - t) v + x) / t`` (= -eps / t)."""
    te = expand_t(t, x)
    return -((1 - te) * v + x) / te
