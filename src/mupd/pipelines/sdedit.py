"""SDEdit-style partial sampling: start from an encoded image noised to t = strength, not from noise.

``x_t = (1 - t) x0 + t eps`` at ``t = strength`` keeps the image's layout (low frequencies survive
small t); integrating the flow back to t = 0 redraws the detail in the model's domain. strength 1
is plain sampling from noise; strength 0 returns the image's autoencoder reconstruction.

The integration is ``mupd.flow.sample`` started part-way (``t_start``), so SDEdit runs exactly the
samplers plain generation runs. ``steps`` counts steps over the whole path t = 1 -> 0; a partial
path takes ``round(steps * strength)`` of them (at least 1; at least 2 for ``euler_maruyama``).
This module imports torch only when it samples, so the CLI can check strengths before loading.
"""

from __future__ import annotations

import math

from ..errors import MupdError, require

# mupd.flow.sample's t_end for euler_maruyama: noise is added only above it, then one mean step to 0
SDE_T_END = 0.04


def check_strength(strength, sampler: str = "heun", steps: int = 50) -> float:
    """Validate ``strength`` for ``sampler`` before any model runs; returns it as a float."""
    require(isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
            and 0.0 <= float(strength) <= 1.0,
            f"strength must be in [0, 1] (0 = keep the image, 1 = new sample from noise), got {strength!r}")
    strength = float(strength)
    if sampler == "euler_maruyama" and 0.0 < strength <= SDE_T_END:
        raise MupdError(
            f"strength {strength:g} is too small for the euler_maruyama sampler: it adds noise only for "
            f"t > {SDE_T_END:g} and ends with one deterministic step, so a start at t <= {SDE_T_END:g} has no "
            f"stochastic part; use strength > {SDE_T_END:g} (e.g. 0.3), or sampler heun/euler, which take any "
            "strength in [0, 1]")
    return strength


def partial_steps(strength: float, steps: int, sampler: str) -> int:
    """Steps actually run from t = strength to 0 (``steps`` spans the whole path 1 -> 0)."""
    if strength <= 0.0:
        return 0
    return max(2 if sampler == "euler_maruyama" else 1, int(round(steps * strength)))


def noise_to(x0, noise, strength: float):
    """The linear interpolant at t = strength (same convention as ``mupd.flow.interpolate``)."""
    return (1.0 - strength) * x0 + strength * noise


def sample_from(pipe, x_t, t_start: float, conditions: dict, *, steps: int, sampler: str = "heun",
                guidance=None, guidance_interval=(0.0, 1.0), scales=None, extra_input=None, generator=None,
                progress: bool = False):
    """Integrate ``x_t`` from ``t_start`` to 0 with ``flow.sample`` (``partial_steps`` steps)."""
    import torch

    from ..flow import sample

    if t_start <= 0.0:
        return x_t
    with torch.no_grad():
        return sample(pipe.model, x_t, conditions, method=sampler, steps=partial_steps(t_start, steps, sampler),
                      t_start=float(t_start), guidance=guidance, guidance_interval=tuple(guidance_interval),
                      scales=scales, extra_input=extra_input, generator=generator, progress=progress)
