"""Model selection that keeps the test fold untouched without betting on a ~15 % validation split.

The holdout protocol picks the epoch on a validation part of a dozen cases: its AUC / C-index is so noisy
that the chosen epoch is a lottery, and those cases are never trained on. Here the training part of an
outer fold is itself cross-validated (``inner_folds`` folds by case, stratified by label / event). The
inner models train in lockstep, each on its own random stream, scored on their inner validation cases
every epoch; they stop together when the mean inner score (3-point moving average over epochs) has not
improved for ``patience`` epochs, and ``e*`` is its best epoch. Then:

* ``ensemble_full`` (the workflow's default): one more model is trained on the *whole* training part
  with the same schedule (cosine over ``epochs``) to ``e*``, and it and the inner models at ``e*``
  average their outputs (probabilities; survival curves and risk). The only variant within 0.05 of the
  optimistic protocol on every synthetic set measured (BENCHMARKS.md, "Honest MIL"): the inner models
  alone lose on sparse evidence (each saw ``(k-1)/k`` of the cases), the whole-part model alone on dense.
  The fold folder saves all of them (:class:`~pipeline.mil.models.ensemble.EnsembleMIL`), so prediction
  and heatmaps apply what was evaluated.
* ``ensemble``: the inner models at ``e*`` only (no retraining).
* ``inner_cv``: the whole-training-part model at ``e*`` only.
* ``inner_cv_swa``: that model with its weights averaged over the epochs ``[e*/2, e*]`` (stochastic
  weight averaging along the cosine tail: one model, smoother than any single epoch).
* ``fixed``: the whole-training-part model after all ``epochs`` (no selection at all).

One call of :func:`fit_selected` computes all of them from the same inner runs (the whole-training-part
model only as far as asked). Nothing here ever receives the outer test fold: callers pass the training part
only, and ``exclude_case_ids`` (the test fold's case ids) is checked against every bag trained or
validated on.
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
from pipeline.log import get_logger
from pipeline.mil.data import Bag
from pipeline.mil.epoch import train_epoch
from pipeline.mil.inference import run_inference
from pipeline.mil.loop import FitResult, make_optimizer
from pipeline.mil.models.ensemble import EnsembleMIL
from pipeline.mil.precision import seed_everything
from pipeline.settings import MILSettings, Selection

log = get_logger("mil")

# the ``mil.selection`` values this module implements: every one the schema lists but ``holdout``
# (the trainer's own early stopping)
SELECTIONS = tuple(s for s in Selection if s != Selection.holdout)


class EpochRunner:
    """One model trained epoch by epoch: Adam and the cosine schedule over ``total`` epochs as the
    trainer's ``fit``, bag order from ``settings.seed``. Several runners can advance in lockstep (the
    inner folds of :func:`fit_selected`, so they can stop together)."""

    def __init__(self, model, task, bags, settings: MILSettings, device, total: int, precision):
        self.model, self.task, self.bags, self.settings = model, task, list(bags), settings
        self.device, self.total, self.precision = device, int(total), precision
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, settings.lr, settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.total
        )
        self.rng = np.random.default_rng(settings.seed)
        self.epoch = 0
        # its own dropout / masking draws, whatever runs between its epochs
        self.torch_rng = _torch_rng(device)

    def step(self) -> float:
        """Train one more epoch; its mean training loss (on the runner's own torch random stream, so
        inner folds trained in lockstep give what each would give trained alone)."""
        outer = _torch_rng(self.device)
        _set_torch_rng(self.torch_rng, self.device)
        try:
            return self._epoch()
        finally:
            self.torch_rng = _torch_rng(self.device)
            _set_torch_rng(outer, self.device)

    def _epoch(self) -> float:
        self.epoch += 1
        n = len(self.bags)
        order = [self.bags[i] for i in self.rng.permutation(n)]
        progress = ((self.epoch - 1) / self.total, 1.0 / (self.total * max(n, 1)))
        s = self.settings
        self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch trains at
        loss = train_epoch(
            self.model, self.optimizer, self.task, order, self.device, s.accumulate,
            s.survival_loss, progress, self.precision,
        )  # fmt: skip
        self.scheduler.step()
        return loss


def _torch_rng(device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if torch.device(device).type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_torch_rng(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


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

    ``on_epoch(epoch, model)`` runs after each epoch. Returns the training loss per epoch.
    """
    runner = EpochRunner(model, task, bags, settings, device, schedule_epochs or epochs, precision)
    losses = []
    for _ in range(int(epochs)):
        losses.append(runner.step())
        if on_epoch is not None:
            on_epoch(runner.epoch, model)
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
    labels: list[str]  # what each model is: inner0, inner1 ..., whole

    def predict(self, task, bags: Sequence[Bag], device, precision="fp32") -> np.ndarray:
        return run_inference(self.module(), task, bags, device, precision)[0]

    def module(self) -> torch.nn.Module:
        """What a fold folder saves: the one model, or an :class:`EnsembleMIL` of all of them."""
        return self.models[0] if len(self.models) == 1 else EnsembleMIL(self.models, self.labels)


@dataclass
class Selected:
    """What :func:`fit_selected` found: the chosen epoch count, the inner curves and each variant."""

    best_epoch: int
    inner_scores: np.ndarray  # [inner fold, epoch]
    out_of_fold: tuple[list[Bag], np.ndarray]  # inner validation bags, their outputs at best_epoch
    # per epoch: mean train / inner loss, lr, seconds (all models)
    epoch_rows: list[dict[str, float]]
    variants: dict[str, Ensemble] = field(default_factory=dict)
    seen_case_ids: set[str] = field(default_factory=set)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _restored(model: torch.nn.Module, state) -> torch.nn.Module:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m.eval()


def _refuse_leaks(train_bags: Sequence[Bag], exclude_case_ids: Sequence[str]) -> set[str]:
    """The training part's case ids; a test-fold case among them is an error before any training."""
    seen = {b.case_id for b in train_bags}
    leaked = sorted(seen & set(map(str, exclude_case_ids)))
    if leaked:
        raise PipelineError(
            "model selection",
            f"test-fold case(s) {', '.join(leaked[:5])} are in the training part",
            "Pass the outer training part only.",
        )
    return seen


@dataclass
class InnerRuns:
    """The inner models trained in lockstep until the mean inner score stopped improving."""

    runners: list[EpochRunner]
    best: int  # e*: the best epoch of the smoothed mean inner score
    scores: np.ndarray  # [inner fold, epoch run]
    kept: list[dict[int, tuple]]  # per inner fold: {e*: (weights, inner validation outputs)}
    rows: list[dict[str, float]]  # per epoch: mean train / inner loss, lr, seconds


def advance(runners: Sequence[EpochRunner], stacked: bool | None = None) -> list[float]:
    """One more epoch of every runner; their training losses.

    ``stacked``: models of the AB-MIL family go through one batched forward per step
    (:mod:`pipeline.mil.stacked`; same predictions up to float rounding); False trains them one at a
    time (the reference path); None (default) batches on CUDA only: on the 2-core CPU the batched step
    measured slower than the one-at-a-time steps (BENCHMARKS.md, "Training cost of the honest default"):
    at WSI feature widths a CPU step is mostly the projection's matmuls and Adam, which batching does
    not shrink, while padding and stacking add copies.
    """
    from pipeline.mil.stacked import can_stack, stacked_epoch

    if stacked is None:
        stacked = torch.device(runners[0].device).type == "cuda"
    if stacked and can_stack([r.model for r in runners], runners[0].settings):
        return stacked_epoch(runners, runners[0].precision)
    return [r.step() for r in runners]


def _best_epoch(scores: np.ndarray) -> tuple[int, int]:
    """``(best epoch of the smoothed mean curve, best epoch among the final smoothed values)``."""
    curve = _smooth(np.nan_to_num(np.nanmean(scores, axis=0), nan=-np.inf))
    epoch = scores.shape[1]
    final_best = int(np.argmax(curve[:-1])) + 1 if epoch > 1 else epoch
    return int(np.argmax(curve)) + 1, final_best


def train_inner(
    build, task, folds, settings: MILSettings, device, precision: str, stacked: bool | None = None
) -> InnerRuns:
    """Train the inner models in lockstep, each scored on its inner validation part every epoch, until
    the smoothed mean inner score has not improved for ``patience`` epochs; keep each model's weights
    and outputs at every epoch that can still be the best one."""
    epochs, seed = settings.epochs, settings.seed
    scores = np.full((len(folds), epochs), np.nan)
    runners: list[EpochRunner] = []
    for f, (tr, _) in enumerate(folds):
        seed_everything(seed + 1 + f)
        runners.append(
            EpochRunner(build(f).to(device), task, tr, settings, device, epochs, precision)
        )
    kept: list[dict[int, tuple]] = [
        {} for _ in folds
    ]  # inner fold -> {epoch: weights} still needed
    rows: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        start, inner_loss = time.perf_counter(), []
        train_loss = advance(runners, stacked)
        for f, ((_, va), runner) in enumerate(zip(folds, runners, strict=True)):
            out, loss, _ = run_inference(runner.model, task, va, device, precision)
            inner_loss.append(loss)
            scores[f, epoch - 1] = task.selection_score(va, out)
            kept[f][epoch] = (_snapshot(runner.model), out)
        rows.append(
            {
                "train_loss": float(np.mean(train_loss)),
                "inner_loss": float(np.mean(inner_loss)),
                "lr": runners[0].lr,
                "train_seconds": time.perf_counter() - start,
            }
        )
        best, final_best = _best_epoch(scores[:, :epoch])
        # smoothed scores before this epoch are final: the best is the best of them, or a later epoch
        for fold_states in kept:
            for e in [e for e in fold_states if e not in (final_best, epoch)]:
                del fold_states[e]
        if epoch - best >= settings.patience:
            log.info(
                "inner selection: no improvement of the mean inner %s for %d epochs; stopped at %d",
                task.metric_name, settings.patience, epoch,
            )  # fmt: skip
            break
    scores = scores[:, :epoch]
    return InnerRuns(runners, _best_epoch(scores)[0], scores, kept, rows)


@dataclass
class WholeModel:
    """The model trained on the whole training part: at e*, averaged over [e*/2, e*], after all epochs."""

    best: torch.nn.Module
    swa: torch.nn.Module
    last: torch.nn.Module  # after the last epoch trained


def train_whole(
    build, task, train_bags, settings: MILSettings, device, precision: str, best: int, run: int
) -> WholeModel:
    """One model on the whole training part for ``run`` epochs (cosine over ``epochs`` either way),
    seeded as the trainer; its weights at ``best``, and averaged over the epochs ``[best/2, best]``."""
    seed_everything(settings.seed)
    full = build().to(device)
    swa: dict[str, torch.Tensor] | None = None
    swa_n, swa_from = 0, max(1, best // 2)
    chosen: dict[str, Any] = {}

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
            chosen["best"] = _snapshot(m)

    epochs = settings.epochs
    train_epochs(
        full, task, train_bags, settings, device, run, epochs, on_epoch=collect, precision=precision
    )
    return WholeModel(_restored(full, chosen["best"]), _restored(full, swa), full.eval())


def fit_selected(
    build: Callable[[], torch.nn.Module],
    task,
    train_bags: Sequence[Bag],
    settings: MILSettings,
    device: torch.device,
    exclude_case_ids: Sequence[str] = (),
    precision: str = "fp32",
    whole: str = "all",
    stacked: bool | None = None,
) -> Selected:
    """Inner-CV selection on ``train_bags`` (the outer training part only); every variant of the module doc.

    ``build(inner)`` returns a fresh model (seeded by the caller's ``seed_everything``) for inner fold
    ``inner`` (None: the whole training part); ``exclude_case_ids`` are the outer test fold's cases,
    asserted absent from everything trained or scored here. ``whole`` says how far the whole-training-part
    model trains: ``"none"`` (not at all: only ``ensemble``), ``"best"`` (to ``e*``: every variant but
    ``fixed``) or ``"all"`` (all ``epochs``: every variant). ``stacked``: see :func:`advance`.
    """
    seen = _refuse_leaks(train_bags, exclude_case_ids)
    folds = inner_folds(task, train_bags, settings.inner_folds, settings.seed)
    inner = train_inner(build, task, folds, settings, device, precision, stacked)
    best = inner.best
    ensemble = Ensemble(
        [_restored(r.model, st[best][0]) for r, st in zip(inner.runners, inner.kept, strict=True)],
        [f"inner{f}" for f in range(len(inner.runners))],
    )
    oof_bags = [b for _, va in folds for b in va]
    oof = (oof_bags, np.concatenate([st[best][1] for st in inner.kept]))
    if whole == "none":
        return Selected(best, inner.scores, oof, inner.rows, {"ensemble": ensemble}, seen)
    run = settings.epochs if whole == "all" else best
    w = train_whole(build, task, train_bags, settings, device, precision, best, run)
    variants = {
        "inner_cv": Ensemble([w.best], ["whole"]),
        "ensemble": ensemble,
        "ensemble_full": Ensemble([*ensemble.models, w.best], [*ensemble.labels, "whole"]),
        "inner_cv_swa": Ensemble([w.swa], ["whole_swa"]),
    }
    if whole == "all":
        variants["fixed"] = Ensemble([w.last], ["whole_all_epochs"])
    return Selected(best, inner.scores, oof, inner.rows, variants, seen)


def fit_fold_selected(
    build: Callable[[], torch.nn.Module],
    task,
    train_bags: Sequence[Bag],
    settings: MILSettings,
    device: torch.device,
    exclude_case_ids: Sequence[str],
    precision: str = "fp32",
) -> tuple[FitResult, torch.nn.Module, torch.nn.Module]:
    """One outer fold under ``settings.selection``: ``(fit record, predictor, model to save)``.

    The predictor and the saved model are the same: the chosen variant's one model, or for
    ``ensemble_full`` / ``ensemble`` an :class:`EnsembleMIL` of its models, so ``wsi-mil predict`` and heatmaps apply exactly what
    the fold's test metrics were computed with.
    """
    if settings.selection not in SELECTIONS:
        raise PipelineError("mil.selection", f"not an inner selection: {settings.selection!r}")
    start = time.perf_counter()
    sel = fit_selected(
        build, task, train_bags, settings, device, exclude_case_ids, precision,
        whole={"ensemble": "none", "fixed": "all"}.get(settings.selection, "best"),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    metric, epochs = task.metric_name, sel.inner_scores.shape[1]  # the inner runs may stop early
    curve = np.nanmean(sel.inner_scores, axis=0)
    smooth = _smooth(np.nan_to_num(curve, nan=-np.inf))
    rows = pd.DataFrame(sel.epoch_rows)
    history = pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            "train_loss": rows["train_loss"],
            "inner_loss": rows["inner_loss"],
            f"inner_{metric}": curve,
            f"inner_{metric}_smoothed": smooth,
            "lr": rows["lr"],
            "train_seconds": rows["train_seconds"],
            "best": np.arange(1, epochs + 1) == sel.best_epoch,
        }
    )
    fitted = FitResult(
        history=history,
        best_epoch=sel.best_epoch,
        best_score=float(smooth[sel.best_epoch - 1]),
        epochs_run=epochs,
        train_seconds_per_epoch=seconds
        / (epochs * len(sel.inner_scores) + settings.epochs * ("fixed" in sel.variants)),  # approx.
        stopped_early=epochs < settings.epochs,
        extra={"inner_folds": settings.inner_folds},
        out_of_fold=sel.out_of_fold,
    )
    model = sel.variants[settings.selection].module()
    return fitted, model, model
