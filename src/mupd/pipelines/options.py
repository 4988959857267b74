"""Option checks shared by the pipelines and their CLI pre-flight; no torch, so they run before loading."""

from __future__ import annotations

import os

import numpy as np

from ..errors import require
from .sdedit import check_strength

SAMPLERS = ("heun", "euler", "euler_maruyama")
MODES = ("readout", "sample", "sdedit")  # the tiled image-to-image loop (stain / translate)


def resolve_seed(seed: int | None) -> int:
    """A user seed, or a fresh one (recorded in the output so the run can be repeated)."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    require(isinstance(seed, (int, np.integer)) and seed >= 0, f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_sampler(sampler: str, steps: int) -> None:
    require(sampler in SAMPLERS, f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
    require(isinstance(steps, (int, np.integer)) and steps >= 1, f"steps must be a positive integer, got {steps!r}")


def check_mode_options(mode: str, *, guidance, steps: int, sampler: str, strength) -> float | None:
    """A readout takes no guidance; SDEdit needs a strength its sampler can start from.
    Returns the strength for ``sdedit``, else None."""
    require(mode in MODES, f"mode must be one of {MODES}, got {mode!r}")
    if mode == "readout":
        require(guidance is None,
                "method 'readout' is one forward pass of the conditional model (the posterior mean), so "
                "classifier-free guidance would not be applied; drop the guidance or use method 'sample'")
        return None
    check_sampler(sampler, steps)
    return check_strength(strength, sampler, steps) if mode == "sdedit" else None
