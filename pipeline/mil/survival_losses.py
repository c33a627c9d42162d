"""Losses over several cases for MIL training with one bag per forward pass.

A bag is one forward pass (its instance count differs from its neighbours'), so the trainer updates after
every case. That is noisy for the discrete-time NLL (one case's censored term says little) and
impossible for the Cox partial likelihood, which compares a case with every case still at risk. Two
helpers fix this without padding bags together:

* :class:`GradientAccumulator` — backward each case's loss scaled by ``1 / group size`` and step the
  optimiser every ``every`` cases (the last, partial group is scaled by its own size), so one update
  follows the gradient of the *mean* loss over the group;
* :func:`cox_partial_nll` (Breslow's handling of tied times) over the risks of a mini-batch of bags,
  gathered one forward pass at a time (see :mod:`pipeline.mil.epoch`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.errors import PipelineError


def cox_partial_nll(
    risks: torch.Tensor, times: torch.Tensor, events: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties: ``-sum_{i: event} [r_i - log sum_{t_j >= t_i} e^{r_j}]``.

    ``risks [B]`` (log relative hazards), ``times [B]``, ``events [B]`` (1 observed, 0 censored). Every case
    whose time is >= an event time is in that event's risk set, ties included (Breslow). ``mean`` divides
    by the number of events (as scikit-survival's ``CoxPHOptimizer`` divides by the number of cases:
    use ``reduction="sum"`` and divide yourself to compare). A batch without an observed event has no
    partial likelihood: the loss is 0 with a zero gradient (the caller's other loss terms still count).
    """
    if reduction not in ("mean", "sum"):
        raise PipelineError("cox_partial_nll", f"reduction must be mean or sum, got {reduction!r}")
    risks = risks.float().view(-1)
    times = times.to(risks.device).float().view(-1)
    events = events.to(risks.device).float().view(-1)
    at_risk = times.view(1, -1) >= times.view(-1, 1)  # [i, j]: j is at risk at t_i
    masked = risks.view(1, -1).expand(len(risks), -1).masked_fill(~at_risk, -torch.inf)
    log_denominator = torch.logsumexp(masked, dim=1)
    terms = events * (log_denominator - risks)
    total = terms.sum()
    if reduction == "sum":
        return total
    return total / events.sum().clamp(min=1.0)


class GradientAccumulator:
    """Step ``optimizer`` once every ``every`` cases, on the mean of their losses.

    Call :meth:`begin` with the number of cases of the epoch, then :meth:`backward` once per case (its loss
    is scaled by ``1 / size of its group``: ``every``, or the remainder for the last group, so every
    update follows a mean); :meth:`backward` returns True when it stepped. ``after_step`` runs after each
    optimiser step (the MHIM teacher's EMA update). ``every=1`` is the plain one-case update.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        every: int = 1,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        if int(every) < 1:
            raise PipelineError(
                "mil.accumulate", f"must be a positive number of cases, got {every!r}"
            )
        self.optimizer = optimizer
        self.every = int(every)
        self.after_step = after_step
        self._left = 0  # cases left in the epoch
        self._in_group = 0  # cases already accumulated in the current group
        self._group = 1
        self.steps = 0

    def begin(self, n_cases: int) -> None:
        """Start an epoch of ``n_cases`` cases (drops any gradient a previous epoch left unstepped)."""
        self._left, self._in_group = int(n_cases), 0
        self.optimizer.zero_grad(set_to_none=True)

    def group_size(self) -> int:
        """Size of the group the next case belongs to."""
        if self._in_group == 0:
            self._group = min(self.every, max(self._left, 1))
        return self._group

    def backward(self, loss: torch.Tensor, cases: int = 1) -> bool:
        """Backward ``loss`` (the *sum* over ``cases`` cases) scaled to the group mean; step when full."""
        size = self.group_size()
        (loss / size).backward()
        self._in_group += cases
        self._left -= cases
        if self._in_group < size and self._left > 0:
            return False
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:
            self.after_step()
        self._in_group = 0
        self.steps += 1
        return True
