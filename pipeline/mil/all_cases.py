"""One model trained on every case of a task, for external validation (``mil.external_all_cases``).

Each cross-validation fold model saw (K-1)/K of the cases; external tables (the paper's Table 5) often
report one model trained on all of them. With no held-out part there is nothing to select on, so the
epoch count comes from the cross-validation: the median of the fold models' ``best_epoch`` over every
fold of every repeat (halves rounded up). The model is trained like the fold models (same settings,
``seed_everything(seed)``, bag order from ``seed``, cosine schedule over ``epochs``, as ``inner_cv``'s
whole-training-part model) and stopped at that epoch, with no selection. The decision threshold
(binary) is Youden's on its own training outputs, as under inner selection. Its folder holds the fold
folder's files (:class:`~pipeline.mil.folder.FoldFolder`), so ``wsi-mil predict`` reads it as any fold.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil.data import Bag
from pipeline.mil.epoch import check_survival_loss
from pipeline.mil.folder import FoldFolder
from pipeline.mil.inference import run_inference
from pipeline.mil.precision import deterministic, seed_everything, training_precision
from pipeline.mil.selection import train_epochs
from pipeline.mil.tasks import Task
from pipeline.mil.train import (
    FoldPlan,
    FoldResult,
    build_model,
    count_parameters,
    model_meta,
    peak_memory_mb,
)
from pipeline.settings import MILSettings

log = get_logger("mil.all_cases")
SELECTION = "median_best_epoch"  # what metrics.json / model.json record as the selection


def median_best_epoch(fold_metrics: Sequence[Mapping[str, Any]]) -> tuple[int, list[int]]:
    """``(median best epoch rounded half up, the folds' best epochs)`` of fold ``metrics.json``s."""
    epochs = [m.get("best_epoch") for m in fold_metrics]
    if not epochs or any(not isinstance(e, int) or e < 1 for e in epochs):
        raise PipelineError(
            "all-cases model",
            f"the fold results give no best epoch for every fold ({epochs})",
            "Train every fold of the method first.",
        )
    return max(1, math.floor(float(np.median(epochs)) + 0.5)), [int(e) for e in epochs]


def train_all_cases(
    task: Task,
    bags: Sequence[Bag],
    method: str,
    settings: MILSettings,
    fold_metrics: Sequence[Mapping[str, Any]],
    outdir: str | os.PathLike | None = None,
    teacher_init: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    name: str | None = None,
) -> FoldResult:
    """Train ``method`` on all ``bags`` for the median best epoch of ``fold_metrics``; write
    ``outdir`` as a fold folder (fold ``None``; ``case_ids`` in metrics.json lists what it saw).

    An MHIM method's teacher is the base method's all-cases model (``teacher_init``).
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    check_survival_loss(settings.survival_loss, task.type, settings.accumulate)
    epochs, fold_epochs = median_best_epoch(fold_metrics)
    plan = FoldPlan(None, {"train": list(bags), "val": [], "test": []}, False, True)
    task.configure(settings)
    task.fit(plan.train_bags)
    task.encode(plan.train_bags)
    in_dim, n_out = int(bags[0].features().shape[1]), task.n_outputs
    precision = training_precision(settings.precision, device, in_dim * settings.hidden_dim)
    log.info("all cases: %s on %d bags for %d epochs (median of %s)", method, len(bags), epochs,
             fold_epochs)  # fmt: skip
    seed_everything(settings.seed)
    with deterministic(device):
        model, teacher = build_model(method, in_dim, n_out, settings, device, None, teacher_init)
        start = time.perf_counter()
        losses = train_epochs(
            *(model, task, plan.train_bags, settings, device, epochs, settings.epochs),
            precision=precision,
        )  # fmt: skip
        seconds = (time.perf_counter() - start) / epochs
        outputs, _, _ = run_inference(model.eval(), task, plan.train_bags, device, precision)
    scored = task.metrics({"train": (plan.train_bags, outputs)}, threshold_role="train")
    metrics = {
        "method": name or method,
        "base_method": method,
        "task_type": task.type,
        "fold": None,
        "all_cases": True,
        "seed": settings.seed,
        "protocol": "holdout",
        "optimistic": False,
        "selection": SELECTION,
        "best_epoch": epochs,
        "epochs_run": epochs,
        "fold_best_epochs": fold_epochs,
        "case_ids": sorted({b.case_id for b in plan.train_bags}),
        "train": scored["train"],
        "n_bags": {"train": len(plan.train_bags)},
        "teacher": teacher,
        "efficiency": {
            "parameters": count_parameters(model),
            "train_seconds_per_epoch": seconds,
            "device": str(device),
            "precision": precision,
            **peak_memory_mb(device),
        },
    }
    meta = {**model_meta(task, plan, method, settings, in_dim, precision), "variant": name}
    meta["selection"] = SELECTION
    history = pd.DataFrame({"epoch": np.arange(1, epochs + 1), "train_loss": losses})
    predictions = task.prediction_frame(plan.train_bags, outputs, "train")
    result = FoldResult(metrics, meta, history, predictions, model)
    if outdir is not None:
        FoldFolder(outdir).write(model, meta, history, predictions, metrics)
    return result
