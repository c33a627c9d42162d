"""Model selection that keeps the test fold untouched without betting on a ~15 % validation split.

The holdout protocol picks the epoch on a validation part of a dozen cases: its AUC / C-index is so noisy
that the chosen epoch is a lottery, and those cases are never trained on. Here the training part of an
outer fold is itself cross-validated (``inner_folds`` folds by case, stratified by label / event):

* ``inner_cv``: each inner model trains ``epochs`` epochs (cosine schedule over ``epochs``) and is scored
  on its inner validation cases every epoch; the epoch count ``e*`` maximising the mean inner score
  (3-point moving average over epochs) is kept, and one model is trained on the *whole* training part
  with the same schedule, stopped at ``e*``.
* ``ensemble``: the inner models themselves, taken at ``e*``, average their outputs (probabilities;
  survival curves and risk). No retraining; each saw ``(k-1)/k`` of the training part.
* ``inner_cv_swa``: the whole-training-part model of ``inner_cv`` with its weights averaged over the
  epochs ``[e*/2, e*]`` (stochastic weight averaging along the cosine tail: one model, smoother than
  any single epoch).
* ``fixed``: the whole-training-part model after all ``epochs`` (no selection at all).

One call of :func:`fit_selected` computes all four from the same inner runs. Nothing here ever receives
the outer test fold: callers pass the training part only, and ``exclude_case_ids`` (the test fold's case
ids) is checked against every bag trained or validated on.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.errors import PipelineError
from pipeline.mil.data import Bag
from pipeline.mil.epoch import train_epoch
from pipeline.mil.inference import run_inference
from pipeline.mil.loop import FitResult, make_optimizer
from pipeline.mil.precision import seed_everything
from pipeline.settings import MILSettings

# the ``mil.selection`` values this module implements (``holdout`` is the trainer's own early stopping)
SELECTIONS = ("inner_cv", "ensemble", "inner_cv_swa", "fixed")


def train_epochs(
    model: torch.nn.Module,
    task,
    bags: Sequence[Bag],
    settings: MILSettings,
    device: torch.device,
    epochs: int,
    schedule_epochs: int | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    precision: str = "fp32",
) -> list[float]:
    """Train exactly ``epochs`` epochs on ``bags`` (no validation); cosine over ``schedule_epochs``.

    Adam and the cosine schedule as the trainer's ``fit``; bag order from ``settings.seed``;
    ``on_epoch(epoch, model)`` runs after each epoch. Returns the training loss per epoch.
    """
    total = int(schedule_epochs or epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, settings.lr, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    rng = np.random.default_rng(settings.seed)
    n, losses = len(bags), []
    for epoch in range(1, int(epochs) + 1):
        order = [bags[i] for i in rng.permutation(n)]
        progress = ((epoch - 1) / total, 1.0 / (total * max(n, 1)))
        losses.append(
            train_epoch(
                model,
                optimizer,
                task,
                order,
                device,
                settings.accumulate,
                settings.survival_loss,
                progress,
                precision,
            )
        )
        scheduler.step()
        if on_epoch is not None:
            on_epoch(epoch, model)
    return losses


def _strata(task, bags: Sequence[Bag]) -> np.ndarray:
    if task.type == "survival":
        return np.array([int(b.target[2]) for b in bags])
    return np.array([int(b.target) for b in bags])


def inner_folds(task, bags: Sequence[Bag], k: int, seed: int) -> list[tuple[list[Bag], list[Bag]]]:
    """``k`` (train, validation) pairs over ``bags`` by case (all bags of a case on one side)."""
    from sklearn.model_selection import StratifiedKFold

    cases = sorted({b.case_id for b in bags})
    label = {}
    for b, s in zip(bags, _strata(task, bags), strict=True):
        label.setdefault(b.case_id, s)
    y = np.array([label[c] for c in cases])
    k = int(k)
    if k < 2 or np.bincount(y).min() < k:
        raise PipelineError(
            "mil.inner_folds",
            f"cannot cross-validate {len(cases)} training cases in {k} folds "
            f"(smallest class / event group: {int(np.bincount(y).min())})",
            "Use fewer inner folds (>= 2) or the holdout selection.",
        )
    out = []
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for _, va in skf.split(cases, y):
        val_cases = {cases[i] for i in va}
        train = [b for b in bags if b.case_id not in val_cases]
        val = [b for b in bags if b.case_id in val_cases]
        assert not {b.case_id for b in train} & {b.case_id for b in val}
        out.append((train, val))
    return out


def _smooth(curve: np.ndarray) -> np.ndarray:
    padded = np.pad(curve, 1, mode="edge")
    return (padded[:-2] + padded[1:-1] + padded[2:]) / 3


@dataclass
class Ensemble:
    """Models whose outputs are averaged (one model: plain inference)."""

    models: list[torch.nn.Module]

    def predict(self, task, bags: Sequence[Bag], device, precision="fp32") -> np.ndarray:
        return self.run(task, bags, device, precision)[0]

    def run(self, task, bags: Sequence[Bag], device, precision="fp32") -> tuple[np.ndarray, float]:
        """``(mean outputs [B, k], seconds)`` (as :func:`run_inference`, without the loss)."""
        runs = [run_inference(m, task, bags, device, precision) for m in self.models]
        return np.mean([r[0] for r in runs], axis=0), float(sum(r[2] for r in runs))


@dataclass
class Selected:
    """What :func:`fit_selected` found: the chosen epoch count, the inner curves and each variant."""

    best_epoch: int
    inner_scores: np.ndarray  # [inner fold, epoch]
    variants: dict[str, Ensemble] = field(default_factory=dict)
    seen_case_ids: set[str] = field(default_factory=set)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restored(model: torch.nn.Module, state) -> torch.nn.Module:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m.eval()


def fit_selected(
    build: Callable[[], torch.nn.Module],
    task,
    train_bags: Sequence[Bag],
    settings: MILSettings,
    device: torch.device,
    exclude_case_ids: Sequence[str] = (),
    precision: str = "fp32",
) -> Selected:
    """Inner-CV selection on ``train_bags`` (the outer training part only); every variant of the module doc.

    ``build()`` returns a fresh model (seeded by the caller's ``seed_everything``); ``exclude_case_ids``
    are the outer test fold's cases, asserted absent from everything trained or scored here.
    """
    excluded = set(map(str, exclude_case_ids))
    seen = {b.case_id for b in train_bags}
    leaked = sorted(seen & excluded)
    if leaked:
        raise PipelineError(
            "model selection",
            f"test-fold case(s) {', '.join(leaked[:5])} are in the training part",
            "Pass the outer training part only.",
        )
    epochs, k, seed = settings.epochs, settings.inner_folds, settings.seed
    scores = np.full((k, epochs), np.nan)
    states: list[list[dict]] = []
    for f, (tr, va) in enumerate(inner_folds(task, train_bags, k, seed)):
        seed_everything(seed + 1 + f)
        model = build().to(device)
        fold_states: list[dict] = []

        def score(epoch, m, f=f, va=va, fold_states=fold_states):
            out, _, _ = run_inference(m, task, va, device, precision)
            scores[f, epoch - 1] = task.selection_score(va, out)
            fold_states.append(_snapshot(m))

        train_epochs(model, task, tr, settings, device, epochs, on_epoch=score, precision=precision)
        states.append(fold_states)
    curve = _smooth(np.nan_to_num(np.nanmean(scores, axis=0), nan=-np.inf))
    best = int(np.argmax(curve)) + 1
    seed_everything(seed)
    full = build().to(device)
    swa: dict[str, torch.Tensor] | None = None
    swa_n, swa_from = 0, max(1, best // 2)
    kept: dict[str, Any] = {}

    def collect(epoch, m):
        nonlocal swa, swa_n
        if swa_from <= epoch <= best:
            state = _snapshot(m)
            if swa is None:
                swa = state
            else:
                for key, v in state.items():
                    if v.is_floating_point():
                        swa[key] += (v - swa[key]) / (swa_n + 1)
            swa_n += 1
        if epoch == best:
            kept["best"] = _snapshot(m)

    train_epochs(
        full, task, train_bags, settings, device, epochs, on_epoch=collect, precision=precision
    )
    variants = {
        "inner_cv": Ensemble([_restored(full, kept["best"])]),
        "ensemble": Ensemble([_restored(full, s[best - 1]) for s in states]),
        "inner_cv_swa": Ensemble([_restored(full, swa)]),
        "fixed": Ensemble([full.eval()]),
    }
    return Selected(best, scores, variants, seen)


def fit_fold_selected(
    build: Callable[[], torch.nn.Module],
    task,
    train_bags: Sequence[Bag],
    settings: MILSettings,
    device: torch.device,
    exclude_case_ids: Sequence[str],
    precision: str = "fp32",
) -> tuple[FitResult, Ensemble, torch.nn.Module]:
    """One outer fold under ``settings.selection``: ``(fit record, predictor, model to save)``.

    The predictor is the chosen variant; the saved model is that variant's one model, or for
    ``ensemble`` the ``inner_cv`` model (a fold folder holds one state dict: ``wsi-mil predict`` on an
    ``ensemble`` fold uses the whole-training-part model at the selected epoch count).
    """
    if settings.selection not in SELECTIONS:
        raise PipelineError("mil.selection", f"not an inner selection: {settings.selection!r}")
    start = time.perf_counter()
    sel = fit_selected(build, task, train_bags, settings, device, exclude_case_ids, precision)
    seconds = time.perf_counter() - start
    metric, epochs = task.metric_name, settings.epochs
    curve = np.nanmean(sel.inner_scores, axis=0)
    smooth = _smooth(np.nan_to_num(curve, nan=-np.inf))
    history = pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            f"inner_{metric}": curve,
            f"inner_{metric}_smoothed": smooth,
            "best": np.arange(1, epochs + 1) == sel.best_epoch,
        }
    )
    fitted = FitResult(
        history=history,
        best_epoch=sel.best_epoch,
        best_score=float(smooth[sel.best_epoch - 1]),
        epochs_run=epochs,
        train_seconds_per_epoch=seconds / (epochs * (settings.inner_folds + 1)),
        stopped_early=False,
        extra={"inner_folds": settings.inner_folds},
    )
    chosen = sel.variants[settings.selection]
    saved = chosen.models[0] if len(chosen.models) == 1 else sel.variants["inner_cv"].models[0]
    return fitted, chosen, saved
