"""One training epoch over bags with gradient accumulation or Cox mini-batches, for every MIL method.

``mil.accumulate`` = k: the optimiser steps once every k cases on the mean of their losses
(:class:`~pipeline.mil.survival_losses.GradientAccumulator`; k = 1 is the trainer's one-case update).
``mil.survival_loss: cox``: the cases of each group of k are forwarded one bag at a time, their risks
(``-sum_k S_k``, the risk the survival task reports and the C-index ranks) are gathered, and one Cox
partial likelihood (Breslow ties) is taken over the group.

Methods whose training loss has terms besides the task loss (the MHIM consistency term, DSMIL's
bag + max-instance mix) keep them: the model's ``training_loss`` is called with a task loss that
returns a zero-valued *marker* leaf and records the logits it was given; the weight each marker carries
in the model's loss (``d loss / d marker``: 0.5 for each DSMIL branch, 1 elsewhere) weights the Cox term
of the logits it stands for. So the same ``training_loss`` serves the NLL and the Cox loss unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.device import autocast_context
from pipeline.errors import PipelineError
from pipeline.mil import survival as S
from pipeline.mil.data import Bag
from pipeline.mil.precision import INPUT_DTYPES
from pipeline.mil.survival_losses import GradientAccumulator, cox_partial_nll

SURVIVAL_LOSSES = ("nll", "cox")


def check_survival_loss(name: str, task_type: str, accumulate: int) -> str:
    """``mil.survival_loss`` checked against the task and ``mil.accumulate``; returns ``name``."""
    if name not in SURVIVAL_LOSSES:
        raise PipelineError(
            "mil.survival_loss", f"unknown loss {name!r}", f"Use {' | '.join(SURVIVAL_LOSSES)}."
        )
    if name == "cox" and task_type != "survival":
        raise PipelineError(
            "mil.survival_loss", "cox is a survival loss", "Use it with a survival task only."
        )
    if name == "cox" and int(accumulate) < 2:
        raise PipelineError(
            "mil.accumulate",
            "the Cox partial likelihood needs groups of >= 2 cases",
            "Set mil.accumulate (e.g. 32) with survival_loss=cox.",
        )
    return name


def needs_train_epoch(accumulate: int, survival_loss: str) -> bool:
    """Whether the trainer must use :func:`train_epoch` instead of its one-case loop."""
    return int(accumulate) > 1 or survival_loss == "cox"


class _Recorder:
    """Task loss that records the logits it gets and returns a zero-valued marker leaf instead."""

    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.markers: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        marker = torch.zeros((), device=logits.device, requires_grad=True)
        self.logits.append(logits.float())
        self.markers.append(marker)
        return marker


def _cox_group(model, task, group, device, dtype, precision, progress) -> torch.Tensor:
    """Mean of the models' other loss terms + marker-weighted Cox partial NLL over one group of cases."""
    others, risks, weights = [], [], []
    for bag in group:
        rec = _Recorder()
        x = bag.features(dtype).to(device)
        with autocast_context(precision, x.device):
            loss, _ = model.training_loss(x, rec, progress)
        w = torch.autograd.grad(loss, rec.markers, retain_graph=True, allow_unused=True)
        weights.append([0.0 if g is None else float(g) for g in w])
        risks.append([S.risk_from_logits(lg).view(()) for lg in rec.logits])
        others.append(loss)
    times = torch.tensor([b.target[1] for b in group])
    events = torch.tensor([float(b.target[2]) for b in group])
    total = torch.stack(others).mean()
    for j in range(len(risks[0])):  # one Cox term per task-loss call of the model (DSMIL: 2)
        w = sum(wb[j] for wb in weights) / len(group)
        total = total + w * cox_partial_nll(torch.stack([r[j] for r in risks]), times, events)
    return total


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    task,
    bags: Sequence[Bag],
    device: torch.device,
    accumulate: int = 1,
    survival_loss: str = "nll",
    progress: tuple[float, float] = (0.0, 0.0),
    precision: str = "fp32",
) -> float:
    """Train over ``bags`` in the given order; return the mean training loss per update group.

    ``progress = (at start, added per case)`` feeds MHIM's masking schedule as in the trainer.
    """
    model.train()
    every = int(accumulate)
    loss_name = check_survival_loss(survival_loss, task.type, every)
    dtype = INPUT_DTYPES[precision]
    start, per_case = progress
    total, n = 0.0, len(bags)
    if loss_name == "cox":
        steps = 0
        for g0 in range(0, n, every):
            group = bags[g0 : g0 + every]
            if len(group) < 2:  # a lone last case has no partner to be ranked against
                continue
            loss = _cox_group(model, task, group, device, dtype, precision, start + g0 * per_case)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.after_optimizer_step()
            total += float(loss.detach())
            steps += 1
        return total / max(steps, 1)
    acc = GradientAccumulator(optimizer, every, model.after_optimizer_step)
    acc.begin(n)
    for i, bag in enumerate(bags):
        x = bag.features(dtype).to(device)
        loss_fn = task.loss_fn(bag)
        with autocast_context(precision, x.device):
            loss, _ = model.training_loss(
                x, lambda lg, f=loss_fn: f(lg.float()), start + i * per_case
            )
        acc.backward(loss)
        total += float(loss.detach())
    return total / max(n, 1)
