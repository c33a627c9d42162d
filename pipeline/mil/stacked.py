"""The inner-CV models of an AB-MIL method trained in lockstep with one batched forward per step.

:func:`pipeline.mil.selection.fit_selected` trains ``inner_folds`` models of one method side by side,
each on its own bags in its own order. On small bags a one-bag step is mostly per-operation overhead
(dispatch, autocast casts, autograd bookkeeping), not arithmetic, so step ``t`` of every model runs as
one computation here: each model projects its own bag (that matmul gains nothing from stacking), the
projected bags are padded into ``[K, N_max, H]``, the attention runs as batched matmuls (``baddbmm``)
over weights stacked from each model's own parameters (``torch.stack``, so gradients flow back to them
unchanged) with a softmax masked to each bag's own instances, then one backward over the sum of the
models' losses (each loss depends on its own model only) and each model's own Adam step.

Measured (BENCHMARKS.md, "Training cost of the honest default"): on the 2-core CPU at WSI widths this is
not faster than one model at a time (a step there is mostly the projection matmul and Adam), so
:func:`pipeline.mil.selection.advance` uses it by default on CUDA only.

What must stay per model is kept per model, so the result equals training each model alone (float
rounding of the batched matmuls aside; ``tests/mil/test_stacked.py`` compares predictions):

* bag order: each runner's own ``numpy`` generator, as :class:`~pipeline.mil.selection.EpochRunner`;
* dropout masks: drawn from each model's own torch random stream (a :class:`torch.Generator` holding
  the runner's state), with exactly the draws :class:`~pipeline.mil.models.common.Dropout` makes;
* a model whose epoch has fewer bags than another's sits out the last steps (no Adam step);
* the running standardisation of ``abmil_std`` and the head run per model (tiny, stateful).

Only the AB-MIL family (``abmil``, ``abmil_gated``, ``abmil_std``) with one-case updates has a batched
path; every other method, ``mil.accumulate`` > 1 and the Cox loss train one model at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from pipeline.device import autocast_context
from pipeline.mil.epoch import needs_train_epoch
from pipeline.mil.models.abmil import ABMIL, GatedABMIL
from pipeline.mil.models.common import Dropout, dropout_mask
from pipeline.mil.models.pooling import StandardizedABMIL
from pipeline.mil.precision import INPUT_DTYPES

STACKABLE = (ABMIL, GatedABMIL, StandardizedABMIL)


def _layers(model: nn.Module) -> list[tuple[nn.Linear, nn.Module, float]] | None:
    """The projection as (Linear, activation, dropout p) triples; None if it is not that shape."""
    mods = list(model.projection)
    if len(mods) % 3:
        return None
    out = []
    for lin, act, drop in zip(mods[::3], mods[1::3], mods[2::3], strict=True):
        if not isinstance(lin, nn.Linear) or not isinstance(drop, Dropout):
            return None
        out.append((lin, act, float(drop.p)))
    return out


def can_stack(models: Sequence[nn.Module], settings) -> bool:
    """Whether :func:`stacked_epoch` trains these models (same AB-MIL class, one-case updates)."""
    if len(models) < 2 or needs_train_epoch(settings.accumulate, settings.survival_loss):
        return False
    kind = type(models[0])
    if kind not in STACKABLE or any(type(m) is not kind for m in models):
        return False
    shapes = {tuple(p.shape for p in m.parameters()) for m in models}
    return len(shapes) == 1 and all(_layers(m) is not None for m in models)


def _generator(state: tuple, device: torch.device) -> torch.Generator:
    """A generator holding a runner's torch random stream (CPU, or the CUDA one on a GPU)."""
    g = torch.Generator(device=device)
    g.set_state(state[1] if device.type == "cuda" else state[0])
    return g


def _saved(state: tuple, g: torch.Generator, device: torch.device) -> tuple:
    return (state[0], g.get_state()) if device.type == "cuda" else (g.get_state(), state[1])


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _forward_losses(models, bags, task, device, dtype, generators) -> list[torch.Tensor]:
    """Each model's training loss on its own bag, computed as one batched forward."""
    hs = []  # the instance projection per model: its big matmul gains nothing from stacking
    for m, bag, g in zip(models, bags, generators, strict=True):
        h = bag.features(dtype).to(device)
        for lin, act, p in _layers(m):
            h = act(lin(h))
            if p > 0.0:  # the mask Dropout draws, from this model's own stream
                h = h * dropout_mask(tuple(h.shape), p, h.dtype, device, g)
        hs.append(h)
    lengths = torch.tensor([h.shape[0] for h in hs], device=device)
    h = pad_sequence(hs, batch_first=True)  # [K, N, H]
    valid = torch.arange(h.shape[1], device=device)[None, :] < lengths[:, None]  # [K, N]
    pools = [m.attention for m in models]
    a = torch.baddbmm(
        _stack([q.proj.bias for q in pools]).unsqueeze(1),
        h,
        _stack([q.proj.weight for q in pools]).transpose(1, 2),
    )
    width = pools[0].attention_dim
    if pools[0].gated:
        a = torch.tanh(a[..., :width]) * torch.sigmoid(a[..., width:])
    else:
        a = torch.tanh(a)
    raw = torch.baddbmm(
        _stack([q.score.bias for q in pools]).unsqueeze(1),
        a,
        _stack([q.score.weight for q in pools]).transpose(1, 2),
    ).squeeze(2)  # [K, N]
    weights = F.softmax(raw.masked_fill(~valid, float("-inf")), dim=1)
    z = torch.bmm(weights.unsqueeze(1).to(h.dtype), h).squeeze(1)  # [K, H]
    if getattr(models[0], "mean_skip", False):
        keep = valid.unsqueeze(2).to(h.dtype)
        mean = (h * keep).sum(1, dtype=torch.float32) / lengths.unsqueeze(1)
        z = torch.cat([z, mean.to(h.dtype)], dim=1)
    losses = []
    for k, (m, bag) in enumerate(zip(models, bags, strict=True)):
        emb = z[k : k + 1]
        if isinstance(m, StandardizedABMIL):
            emb = m.standardize(emb)
        loss_fn = task.loss_fn(bag)
        losses.append(loss_fn(m.classifier(emb).float()))
    return losses


def stacked_epoch(runners: Sequence, precision: str) -> list[float]:
    """One epoch of every runner in lockstep (see module docstring); each runner's mean training loss.

    ``runners`` are :class:`~pipeline.mil.selection.EpochRunner` objects: their epoch counter, bag
    order, learning-rate schedule and torch random stream advance exactly as :meth:`EpochRunner.step`
    would advance them.
    """
    device = runners[0].device
    dtype = INPUT_DTYPES[precision]
    orders, generators = [], []
    for r in runners:
        r.epoch += 1
        orders.append([r.bags[i] for i in r.rng.permutation(len(r.bags))])
        r.lr = r.optimizer.param_groups[0]["lr"]
        r.model.train()
        r.optimizer.zero_grad(set_to_none=True)
        generators.append(_generator(r.torch_rng, torch.device(device)))
    totals = [0.0] * len(runners)
    for t in range(max(len(o) for o in orders)):
        active = [k for k, o in enumerate(orders) if t < len(o)]
        with autocast_context(precision, torch.device(device)):
            losses = _forward_losses(
                [runners[k].model for k in active],
                [orders[k][t] for k in active],
                runners[0].task,
                device,
                dtype,
                [generators[k] for k in active],
            )
        torch.stack(losses).sum().backward()
        for k, loss in zip(active, losses, strict=True):
            r = runners[k]
            r.optimizer.step()
            r.optimizer.zero_grad(set_to_none=True)
            r.model.after_optimizer_step()
            totals[k] += float(loss.detach())
    for r, g in zip(runners, generators, strict=True):
        r.scheduler.step()
        r.torch_rng = _saved(r.torch_rng, g, torch.device(device))
    return [total / max(len(o), 1) for total, o in zip(totals, orders, strict=True)]
