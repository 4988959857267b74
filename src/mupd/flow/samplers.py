"""Samplers from t = 1 (noise) to t = 0 (data): Euler and Heun ODE, Euler-Maruyama SDE (REPA-style),
and the one-pass read-out ``x0_hat = -v(0, t=1, c)`` for dense translation.

Time grids: ``"linear"`` or ``"time_shift"`` (``t' = s t / (1 + (s - 1) t)``, s > 1 spends more steps
near noise, as SD3). The SDE uses the linear interpolant's score (``score_from_velocity``) with
diffusion coefficient ``w(t) = 2 t``, integrates to ``t_end`` (0.04) and takes a last deterministic
mean step to 0.
"""

from __future__ import annotations

import hashlib

import torch
from tqdm.auto import tqdm

from ..errors import MupdError
from ..settings import settings
from .guidance import GuidancePlan, guided_velocity
from .interpolant import score_from_velocity

METHODS = ("heun", "euler", "euler_maruyama")


def time_grid(steps: int, schedule: str = "linear", shift: float = 3.0, t_end: float = 0.0, t_start: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times (float64) from ``t_start`` down to ``t_end``, evenly spaced in the
    schedule's coordinate (for ``time_shift``: in ``u`` with ``t = s u / (1 + (s - 1) u)``)."""
    if steps < 1:
        raise MupdError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise MupdError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    if schedule == "linear":
        return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    if schedule != "time_shift":
        raise MupdError(f"schedule must be 'linear' or 'time_shift', not {schedule!r}")
    if shift <= 0:
        raise MupdError(f"shift must be positive, got {shift}")
    inverse = lambda t: t / (shift - (shift - 1) * t)  # noqa: E731
    u = torch.linspace(inverse(t_start), inverse(t_end), steps + 1, dtype=torch.float64)
    t = shift * u / (1 + (shift - 1) * u)
    t[0], t[-1] = t_start, t_end  # exact endpoints
    return t


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def cls_noise_for(noise: torch.Tensor, cls_dim: int) -> torch.Tensor:
    """CLS-token noise for each sample, a function of that sample's own latent noise (its bytes seed
    a CPU generator): a sample then does not depend on the rest of its batch, so image i of a call
    repeats when generated alone from the same latent noise, as it does for models without CLS."""
    rows = noise.detach().float().cpu().reshape(noise.shape[0], -1)
    out = []
    for row in rows:
        digest = hashlib.blake2b(row.numpy().tobytes(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        out.append(torch.randn(cls_dim, generator=g))
    return torch.stack(out).to(noise.device)


def _in_interval(t: float, interval) -> bool:
    lo, hi = interval
    return lo <= t <= hi


@torch.no_grad()
def sample(
    model,
    noise: torch.Tensor,
    conditions: dict | None = None,
    *,
    method: str = "heun",
    steps: int = 50,
    guidance=None,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    scales: dict | None = None,
    schedule: str = "linear",
    shift: float = 3.0,
    t_end: float = 0.04,
    t_start: float = 1.0,
    extra_input: torch.Tensor | None = None,
    cls_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_cls: bool = False,
):
    """Integrate from ``noise`` (t = 1) to data (t = 0); returns x0 (and the CLS when ``return_cls``).

    ``scales``: the per-modality inference scale lambda_m of the decoupled cross-attention,
    ``{modality: scale}`` (e.g. ``{"rna": 1.5}``; 1 = as trained, 0 = that stream off; unknown
    modalities, or a scale other than 1 on a ``shared``-attention model, are a ``MupdError``).
    ``guidance``: None, a joint float scale, or ``{modality: scale}`` (see ``guided_velocity``); it is
    applied only while ``guidance_interval[0] <= t <= guidance_interval[1]``. ``extra_input`` (source
    latents) is concatenated after x at every call. Models with a CLS token integrate it alongside
    (from ``cls_noise``, else from :func:`cls_noise_for` of each sample's own noise, so a sample never
    depends on its batch). ``t_end`` is used by the SDE only.
    ``t_start < 1`` starts part-way (SDEdit): ``noise`` is then the partly noised ``x_t``.
    """
    if method not in METHODS:
        raise MupdError(f"method must be one of {METHODS}, not {method!r}")
    x = noise.float()
    device = x.device
    cls = _initial_cls(model, noise, cls_noise)
    check_at_edge(model, noise, extra_input, conditions, scales, cls)

    # conditions are encoded once per plan (guided / plain) and their keys/values reused every step
    plans: dict[bool, GuidancePlan] = {}

    def plan(guided: bool) -> GuidancePlan:
        if guided not in plans:
            with settings.autocast(device):
                plans[guided] = GuidancePlan(model, conditions, guidance if guided else None, x.shape[0], prepare=True)
        return plans[guided]

    def velocity(x_cur, cls_cur, t: float):
        chosen = plan(guidance is not None and _in_interval(t, guidance_interval))
        inp = x_cur if extra_input is None else torch.cat([x_cur, extra_input.to(x_cur.dtype)], dim=1)
        tt = torch.full((x_cur.shape[0],), t, device=device)
        with settings.autocast(device):
            out = chosen.velocity(model, inp, tt, scales=scales, cls=cls_cur)
        v, cls_v = out if cls_cur is not None else (out, None)
        return v.float(), None if cls_v is None else cls_v.float()

    times = _sampling_times(method, steps, schedule, shift, t_end, t_start)
    bar = tqdm(range(len(times) - 1), desc=f"sampling ({method})", disable=not progress, leave=False)
    for i in bar:
        t_cur, t_next = times[i], times[i + 1]
        dt = t_next - t_cur  # negative: time runs from noise to data
        v, cls_v = velocity(x, cls, t_cur)
        if method == "euler":
            x, cls = x + dt * v, None if cls is None else cls + dt * cls_v
        elif method == "heun":
            x_pred = x + dt * v
            cls_pred = None if cls is None else cls + dt * cls_v
            v2, cls_v2 = velocity(x_pred, cls_pred, t_next)
            x = x + dt * 0.5 * (v + v2)
            cls = None if cls is None else cls + dt * 0.5 * (cls_v + cls_v2)
        else:
            last = i == len(times) - 2
            x = _sde_step(x, v, t_cur, dt, generator, last)
            if cls is not None:
                cls = _sde_step(cls, cls_v, t_cur, dt, generator, last)
    return (x, cls) if return_cls else x


def check_at_edge(model, x: torch.Tensor, extra_input, conditions, scales, cls=None) -> None:
    """Validate the inputs once, before any step runs: the model's forward does not (it stays free
    of host syncs). Networks without ``check_inputs`` are taken as they are."""
    if not hasattr(model, "check_inputs"):
        return
    channels = x.shape[1] + (0 if extra_input is None else extra_input.shape[1])
    shape = (x.shape[0], channels, *x.shape[2:])  # only the shape is checked: no concatenated copy
    model.check_inputs(torch.empty(shape, device="meta"), torch.ones(x.shape[0]), conditions, scales=scales, cls=cls)


def _initial_cls(model, noise: torch.Tensor, cls_noise: torch.Tensor | None) -> torch.Tensor | None:
    """The CLS token's starting noise for models that denoise one (None otherwise)."""
    cls_dim = getattr(getattr(model, "config", None), "cls_dim", None)
    if not cls_dim or getattr(model, "cls_head", None) is None:
        return None
    return cls_noise.float().to(noise.device) if cls_noise is not None else cls_noise_for(noise, cls_dim)


def _sampling_times(method: str, steps: int, schedule: str, shift: float, t_end: float, t_start: float) -> list[float]:
    """The time points from ``t_start`` to 0; the SDE steps stochastically to ``t_end``, then one mean step."""
    sde = method == "euler_maruyama"
    if sde and steps < 2:
        raise MupdError("euler_maruyama needs steps >= 2 (stochastic steps to t_end, then one mean step to 0)")
    grid = time_grid(steps - 1 if sde else steps, schedule, shift, t_end if sde else 0.0, t_start)
    if sde:
        grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])
    return grid.tolist()


def _sde_step(x: torch.Tensor, v: torch.Tensor, t: float, dt: float, generator, last: bool) -> torch.Tensor:
    """Euler-Maruyama for the reverse SDE with drift ``v - w/2 * score`` and ``w(t) = 2 t``; the last
    step is the mean (no noise)."""
    diffusion = 2.0 * t
    score = score_from_velocity(v, x, torch.full((x.shape[0],), t, device=x.device))
    drift = v - 0.5 * diffusion * score
    x = x + drift * dt
    if not last:
        x = x + (diffusion ** 0.5) * (abs(dt) ** 0.5) * _randn(x.shape, generator, x)
    return x


@torch.no_grad()
def readout(model, conditions: dict | None, extra_input: torch.Tensor | None, shape, *, scales: dict | None = None) -> torch.Tensor:
    """One pass at t = 1 with a zero latent: ``x0_hat = -v(0, t=1, c)`` (dense translation read-out).

    ``shape`` is the target latent shape (B, C, H, W)."""
    if extra_input is not None:
        device = extra_input.device
    else:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(tuple(shape), device=device)
    check_at_edge(model, x, extra_input, conditions, scales)
    inp = x if extra_input is None else torch.cat([x, extra_input.to(x.dtype)], dim=1)
    with settings.autocast(device):
        v = guided_velocity(model, inp, torch.ones(x.shape[0], device=device), conditions, None, scales=scales)
    return -v.float()
