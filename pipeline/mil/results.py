"""What other stages read of trained MIL results: the one door of ``mil`` for heatmaps.

Heatmaps need a method's fold models with the cases each one tested, a model loaded back with its
record, the feature bags of given slides and a bag scored patch by patch. They get those here and
nothing else of ``mil``, so the fold folder's files, the splits table and the bag layout can change
behind this module without heatmaps noticing (docs/architecture.md §3 checks the import).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.mil.data import Bag, FeatureBank, find_feature_files
from pipeline.mil.folder import FoldFolder, ModelRecord
from pipeline.mil.splits import fold_roles
from pipeline.mil.tasks import ClassificationTask, Task, task_from_metadata

__all__ = [
    "Bag",
    "ClassificationTask",
    "FeatureBank",
    "ModelRecord",
    "Task",
    "feature_stores",
    "load_fold_model",
    "model_task",
    "score_bag",
    "slide_bags",
    "test_cases",
    "test_folds",
]


def test_folds(splits: pd.DataFrame) -> dict[str, int]:
    """``case_id -> fold`` whose test part holds the case; a case tested twice is an error."""
    test = splits[splits["role"] == "test"]
    twice = sorted(test.loc[test["case_id"].duplicated(), "case_id"].unique())
    if twice:
        raise PipelineError(
            "splits",
            f"case(s) {', '.join(twice[:5])} are in the test part of more than one fold",
            "Re-create the splits with `wsi-mil splits`.",
        )
    return {str(c): int(f) for c, f in zip(test["case_id"], test["fold"], strict=True)}


def test_cases(splits: pd.DataFrame, fold: int) -> set[str]:
    """The cases in fold ``fold``'s test part (an error when the splits have no such fold)."""
    return {case for case, role in fold_roles(splits, fold).items() if role == "test"}


def load_fold_model(folder: str | os.PathLike, device: Any = "cpu") -> tuple[Any, ModelRecord]:
    """A fold folder's (or all-cases folder's) model in eval mode on ``device``, and its record."""
    return FoldFolder(folder).load_model(device)


def model_task(record: ModelRecord) -> Task:
    """The task a trained model answers, rebuilt without labels from its record (for new slides)."""
    return task_from_metadata(record.task)


def feature_stores(features_dir: str | os.PathLike) -> dict[str, Path]:
    """``slide_id -> feature store`` of a features folder."""
    return find_feature_files(features_dir)


def slide_bags(bank: FeatureBank, slides: Iterable[str] | None = None) -> list[Bag]:
    """One unlabelled bag per slide of ``bank`` (only ``slides`` when given), in the bank's order."""
    wanted = None if slides is None else set(slides)
    return [
        Bag(slide, slide, (slide,), None, bank)
        for slide in bank.slides
        if wanted is None or slide in wanted
    ]


def score_bag(model: Any, bag: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-patch score maps and the bag's logits from one forward pass (see :mod:`pipeline.mil.scores`)."""
    from pipeline.mil.scores import score_bag as score

    return score(model, bag)
