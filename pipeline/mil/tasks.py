"""Pluggable MIL tasks: what a bag is, how its target is encoded, the loss, the outputs and the metrics.

The trainer, evaluator and predictor are written once against :class:`Task`
(:mod:`pipeline.mil.task_base`); a task supplies

* tables → bags: ``wanted_slides()`` (which feature stores to load; the rule is
  :func:`pipeline.cohort.choose_slides`) and ``make_bags(bank)``;
* ``case_strata()`` for the splits (one stratum label per case);
* ``fit(train_bags)`` for label encodings learnt on the training part (survival time bins);
* ``loss(logits, bag)``, ``outputs(logits)`` (score rows) and ``selection_score`` (higher is better);
* ``metrics(...)``, ``prediction_frame(...)`` and ``metadata()`` / :func:`task_from_metadata` so a saved
  model can be rebuilt for prediction.

The task types live one per file (:mod:`pipeline.mil.classification_task`,
:mod:`pipeline.mil.survival_task`); this module builds them, from tables or from a model's record,
and is where the rest of the package imports them from.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from pipeline import layout
from pipeline.cohort import TASK_TYPES
from pipeline.errors import PipelineError
from pipeline.mil.classification_task import ClassificationTask
from pipeline.mil.survival_task import SurvivalTask
from pipeline.mil.task_base import Task
from pipeline.mil.task_tables import detect_task_type

__all__ = ["ClassificationTask", "SurvivalTask", "Task", "build_task", "task_from_metadata"]


def build_task(
    task_type: str | None, table: str | os.PathLike, slides_table=None, n_bins: int = 4
) -> Task:
    """The task for a labels/survival table; ``task_type`` None picks it from the table's columns."""
    task_type = task_type or detect_task_type(table)
    if task_type == "classification":
        return ClassificationTask.from_csv(table)
    if task_type == "survival":
        return SurvivalTask.from_csv(table, slides_table, n_bins=n_bins)
    raise PipelineError(
        "task", f"unknown task type '{task_type}'", f"Use one of {', '.join(TASK_TYPES)}."
    )


def task_from_metadata(meta: dict[str, Any], slides: pd.DataFrame | None = None) -> Task:
    """Rebuild a trained model's task (no labels) from ``model.json``'s ``task`` entry, for prediction."""
    if meta["type"] == "classification":
        task = ClassificationTask(None, classes=meta["classes"])
        task.threshold = meta.get("threshold")
        return task
    if meta["type"] == "survival":
        return SurvivalTask(None, slides, n_bins=meta["n_bins"], edges=meta.get("bin_edges"))
    raise PipelineError(
        layout.MODEL_META, f"unknown task type '{meta['type']}'", "Re-train the model."
    )
