"""SDEdit-style partial sampling: start from an encoded image noised to t = strength, not from noise.

``x_t = (1 - t) x0 + t eps`` at ``t = strength`` keeps the image's layout (low frequencies survive
small t); integrating the flow back to t = 0 redraws the detail in the model's domain. strength 1
is plain sampling from noise; strength 0 returns the image unchanged.
"""

from __future__ import annotations

import inspect

import torch

from ..errors import require


def noise_to(x0: torch.Tensor, noise: torch.Tensor, strength: float) -> torch.Tensor:
    """The linear interpolant at t = strength (same convention as ``mupd.flow.interpolate``)."""
    return (1.0 - strength) * x0 + strength * noise


def check_strength(strength: float) -> float:
    require(isinstance(strength, (int, float)) and 0.0 <= float(strength) <= 1.0,
            f"strength must be in [0, 1] (0 = keep the image, 1 = new sample from noise), got {strength!r}")
    return float(strength)


@torch.no_grad()
def sample_from(pipe, x_t: torch.Tensor, t_start: float, conditions: dict, *, steps: int, sampler: str = "heun",
                guidance=None, guidance_interval=(0.0, 1.0), extra_input=None, generator=None) -> torch.Tensor:
    """Integrate from ``t_start`` to 0 with ``ceil(steps * t_start)`` steps (at least one)."""
    from .. import flow

    if t_start <= 0.0:
        return x_t
    n = max(1, int(round(steps * t_start)))
    kwargs = dict(method=sampler, steps=n, guidance=guidance, guidance_interval=tuple(guidance_interval),
                  extra_input=extra_input, generator=generator)
    params = inspect.signature(flow.sample).parameters
    for name in ("t_start", "start_t", "t_max", "t0"):
        if name in params:  # the core sampler can start part-way
            return flow.sample(pipe.model, x_t, conditions, **{name: float(t_start)}, **kwargs)
    return _integrate(pipe, x_t, t_start, conditions, n, sampler, guidance, tuple(guidance_interval), extra_input, generator)


def _integrate(pipe, x, t_start, conditions, steps, sampler, guidance, interval, extra_input, generator):
    """Euler / Heun / Euler-Maruyama from t_start to 0 (used when the core sampler cannot start part-way)."""
    ts = torch.linspace(float(t_start), 0.0, steps + 1, device=x.device)
    for i in range(steps):
        t, t_next = ts[i].item(), ts[i + 1].item()
        v = velocity(pipe, x, t, conditions, guidance, interval, extra_input)
        if sampler == "heun" and t_next > 0:
            x_euler = x + (t_next - t) * v
            v_next = velocity(pipe, x_euler, t_next, conditions, guidance, interval, extra_input)
            x = x + (t_next - t) * 0.5 * (v + v_next)
        elif sampler == "euler_maruyama" and t_next > 0:
            x = _em_step(x, v, t, t_next, generator)
        else:
            x = x + (t_next - t) * v
    return x


def _em_step(x, v, t, t_next, generator):
    """Euler-Maruyama as in ``mupd.flow.samplers``: drift ``v - w/2 * score``, ``w(t) = 2 t``."""
    from ..flow import score_from_velocity

    dt = t_next - t  # negative: time runs towards data
    score = score_from_velocity(v, x, torch.full((x.shape[0],), t, device=x.device))
    x = x + (v - t * score) * dt
    noise = torch.randn(x.shape, generator=generator, device=generator.device if generator is not None else x.device)
    return x + (2.0 * t * abs(dt)) ** 0.5 * noise.to(x.device, x.dtype)


def velocity(pipe, x, t: float, conditions: dict, guidance, interval, extra_input):
    """The core's guided velocity (one batched forward over guidance branches) at one time."""
    from ..flow import guided_velocity
    from ..settings import settings

    g = guidance if interval[0] <= t <= interval[1] else None
    inp = x if extra_input is None else torch.cat([x, extra_input.to(x.dtype)], dim=1)
    tt = torch.full((x.shape[0],), t, device=x.device)
    with settings.autocast(x.device):
        return guided_velocity(pipe.model, inp, tt, conditions, g).float()
