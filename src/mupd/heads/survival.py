"""Survival losses: the discrete-time negative log-likelihood of PORPOISE/SurvPath (Zadeh & Schmid
2020) and the Cox partial likelihood (Breslow ties).

Discrete time: follow-up is cut into ``n_bins`` intervals at the quantiles of the *uncensored*
training times (as PORPOISE's ``qcut``); the head predicts a hazard logit per interval,
h_j = sigmoid(logit_j), S_j = prod_{i<=j} (1 - h_i), and its risk score is ``-sum_j S_j``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import require


def time_bins(time: np.ndarray, event: np.ndarray, n_bins: int = 4) -> np.ndarray:
    """Interior bin edges (n_bins - 1) at quantiles of the uncensored times (training rows only)."""
    require(n_bins >= 2, f"--bins must be >= 2, got {n_bins}")
    observed = np.asarray(time)[np.asarray(event, bool)]
    require(len(observed) >= n_bins, f"{len(observed)} observed events are too few for {n_bins} time bins")
    edges = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.unique(edges)


def discretize(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index 0..len(edges) of each time (edge values fall in the upper bin, like pandas' cut)."""
    return np.searchsorted(edges, np.asarray(time), side="right").astype(np.int64)


def nll_survival_loss(logits: torch.Tensor, bins: torch.Tensor, event: torch.Tensor, alpha: float = 0.4) -> torch.Tensor:
    """PORPOISE's ``NLLSurvLoss`` in log space. ``logits`` (B, K) hazard logits, ``bins`` (B,) int
    interval of the time, ``event`` (B,) 1 = death observed. ``alpha`` up-weights uncensored rows."""
    log_h = F.logsigmoid(logits)  # log h_j
    log_1mh = F.logsigmoid(-logits)  # log(1 - h_j)
    log_s = torch.cumsum(log_1mh, dim=1)  # log S_j
    log_s_pad = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)  # S_{-1} = 1
    y = bins.long().unsqueeze(1)
    c = 1.0 - event.float().unsqueeze(1)  # censored
    uncensored = -(1 - c) * (log_s_pad.gather(1, y) + log_h.gather(1, y))
    censored = -c * log_s_pad.gather(1, y + 1)
    return ((1 - alpha) * (censored + uncensored) + alpha * uncensored).mean()


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Risk score of a discrete-time head: minus the summed survival curve (higher = dies sooner)."""
    return -torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1)).sum(dim=1)


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties) averaged over events; ``risk`` (B,) log hazard.
    A batch with no event contributes 0 (it carries no ranking information)."""
    order = torch.argsort(time, descending=True)
    risk, time, event = risk[order], time[order], event[order].float()
    log_cum = torch.logcumsumexp(risk, dim=0)
    # Breslow: tied times share the risk set of the earliest of them, i.e. the last index of the tie.
    _, inverse, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0) - 1
    log_cum = log_cum[last[inverse]]
    n_events = event.sum()
    return -((risk - log_cum) * event).sum() / n_events.clamp(min=1.0)
