"""The interface every MIL task implements: what a bag is, how its target is encoded, the loss, the
outputs and the metrics (see :mod:`pipeline.mil.tasks` for the list). The trainer, evaluator and
predictor are written once against :class:`Task`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.cohort import TaskSlides
from pipeline.log import get_logger
from pipeline.mil.data import Bag, FeatureBank
from pipeline.settings import MILSettings

log = get_logger("mil.task")


class Task:
    """Interface (see the module docstring); subclasses are :class:`ClassificationTask`, :class:`SurvivalTask`."""

    type: str = ""
    metric_name: str = ""
    n_outputs: int = 0

    def wanted_slides(self) -> list[str]:
        raise NotImplementedError

    def make_bags(self, bank: FeatureBank) -> list[Bag]:
        raise NotImplementedError

    def case_strata(self) -> tuple[pd.Series, pd.Series]:
        raise NotImplementedError

    def configure(self, settings: MILSettings) -> None:
        """Take task settings from the ``mil`` settings (the binary threshold policy)."""

    def fit(self, train_bags: Sequence[Bag]) -> None:
        """Learn label encodings from the training part (nothing for classification)."""

    def encode(self, bags: Sequence[Bag]) -> None:
        """Re-encode bag targets with what :meth:`fit` learnt (nothing for classification)."""

    def loss_fn(self, bag: Bag) -> Callable[[torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def output_columns(self) -> list[str]:
        raise NotImplementedError

    def selection_score(self, bags: Sequence[Bag], outputs: np.ndarray) -> float:
        raise NotImplementedError

    def metrics(
        self, parts: dict[str, tuple[Sequence[Bag], np.ndarray]], threshold_role: str
    ) -> dict[str, Any]:
        raise NotImplementedError

    def prediction_frame(
        self, bags: Sequence[Bag], outputs: np.ndarray, role: str | None
    ) -> pd.DataFrame:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        raise NotImplementedError


def chosen_slide_ids(chosen: TaskSlides) -> list[str]:
    """The slide ids of a :class:`pipeline.cohort.TaskSlides`, its notes logged as warnings."""
    for note in chosen.notes:
        log.warning("%s", note)
    return chosen.slide_ids
