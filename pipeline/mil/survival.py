"""Discrete-time survival for MIL: quantile time bins, the censored NLL, risk scores and Harrell's C-index.

The formulation is the one of Zadeh & Schmid (2020) used by Chen et al. (PORPOISE, MCAT, SurvPath) and
by the MHIM-MIL survival experiments. Follow-up is cut into ``K`` intervals at quantiles of the
*uncensored* times (so each interval holds about the same number of observed events); the first edge is
moved to 0 and the last to +inf, so every time, censored or not, falls into a bin. The model gives one
logit per interval and the discrete hazard ``h_k = sigmoid(logit_k) = P(T in bin k | T >= bin k)``;
the survival after bin ``k`` is ``S_k = prod_{j<=k} (1 - h_j)``. For a case in bin ``y``:

* observed event (``event = 1``):  ``-log S_{y-1} - log h_y``   (survived bins before ``y``, died in ``y``)
* censored (``event = 0``):        ``-log S_y``                  (still alive at the end of bin ``y``)

with ``S_{-1} = 1``. ``alpha`` > 0 adds ``alpha`` times the uncensored term again (the up-weighting of
Chen et al.'s ``NLLSurvLoss(alpha)``: ``(1 - alpha) * L + alpha * L_uncensored``); the default 0 is the
plain likelihood. Risk = ``-sum_k S_k`` (higher = earlier death), the usual ranking score for the
C-index, which is Harrell's, computed by scikit-survival.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError

EPS = 1e-7


def quantile_bin_edges(times, events, n_bins: int = 4) -> np.ndarray:
    """``n_bins + 1`` increasing edges: quantiles of the uncensored times, first 0, last +inf.

    Duplicate quantiles (many tied event times) are merged, so fewer bins may come back; a cohort with
    no observed event cannot be binned and raises.
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events).astype(bool)
    observed = times[events]
    if observed.size == 0:
        raise PipelineError(
            "survival labels",
            "no observed event (event = 1) among the training cases",
            "A survival model needs observed events; check the event column (1 = observed).",
        )
    inner = np.quantile(observed, np.linspace(0, 1, n_bins + 1)[1:-1])
    inner = np.unique(inner[inner > 0])
    return np.concatenate([[0.0], inner, [np.inf]])


def assign_bins(times, edges: np.ndarray) -> np.ndarray:
    """Bin index (0..K-1) of each time: bin k holds ``edges[k] <= t < edges[k+1]``."""
    times = np.asarray(times, dtype=float)
    k = np.searchsorted(edges, times, side="right") - 1
    return np.clip(k, 0, len(edges) - 2).astype(np.int64)


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    """``S_k = prod_{j<=k} (1 - sigmoid(logit_j))`` for logits ``[B, K]``."""
    return torch.cumprod(1 - torch.sigmoid(logits), dim=1)


def nll_loss(
    logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.0
) -> torch.Tensor:
    """Mean discrete-time negative log-likelihood with censoring (module docstring) over a batch.

    ``logits [B, K]``, ``bins [B]`` (int), ``events [B]`` (1 observed, 0 censored).
    """
    bins = bins.long().view(-1, 1)
    events = events.to(logits.dtype).view(-1, 1)
    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    surv_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)  # S_{-1} = 1
    s_before = surv_pad.gather(1, bins).clamp(min=EPS)
    h_at = hazards.gather(1, bins).clamp(min=EPS)
    s_at = surv_pad.gather(1, bins + 1).clamp(min=EPS)
    uncensored = -events * (torch.log(s_before) + torch.log(h_at))
    censored = -(1 - events) * torch.log(s_at)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def risk_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Risk ``-sum_k S_k`` per bag (``[B]``): higher means shorter expected survival."""
    return -survival_curve(logits).sum(dim=1)
