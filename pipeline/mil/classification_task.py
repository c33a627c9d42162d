"""Classification (table ``slide_id,case_id,label``): one bag per slide; classes are the sorted label
values (numeric order when all are numbers) and the positive class of a binary task is the last one;
cross-entropy; AUC, accuracy, balanced accuracy and F1 at the protocol's threshold."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.cohort import choose_slides
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil import metrics as M
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.prediction_frames import classification_frame
from pipeline.mil.task_base import Task, chosen_slide_ids
from pipeline.mil.task_tables import (
    as_table,
    label_str,
    majority,
    read_table,
    refuse_repeats,
    sort_labels,
)
from pipeline.settings import MILSettings
from pipeline.stats.metrics import auc

log = get_logger("mil.task")


class ClassificationTask(Task):
    """Slide-level bags with a class label each; cross-entropy; AUC / accuracy / balanced accuracy / F1."""

    type = "classification"
    metric_name = "auc"

    def __init__(
        self,
        table: pd.DataFrame | None = None,
        classes: Sequence[str] | None = None,
        source: str = "labels",
    ) -> None:
        self.threshold: float | None = None
        self.threshold_policy = "youden"
        if table is None:
            self.table = pd.DataFrame(columns=["slide_id", "case_id", "label"])
            self.classes = [str(c) for c in classes or []]
        else:
            df = table.copy()
            if "case_id" not in df.columns:
                df["case_id"] = df["slide_id"]
            df["case_id"] = df["case_id"].where(
                df["case_id"].notna() & (df["case_id"] != "nan"), df["slide_id"]
            )
            unlabelled = df["label"].isna()
            for slide in df.loc[unlabelled, "slide_id"]:
                log.warning("slide %s: empty label in %s; left out", slide, source)
            df = refuse_repeats(df[~unlabelled], "slide_id", "slide", source)
            df["label"] = df["label"].map(label_str)
            self.classes = (
                sort_labels(df["label"]) if classes is None else [str(c) for c in classes]
            )
            unknown = sorted(set(df["label"]) - set(self.classes))
            if unknown:
                raise PipelineError(
                    source, f"label(s) {unknown} not among the model's classes {self.classes}"
                )
            self.table = df.reset_index(drop=True)
        if self.table is not None and len(self.table) and len(self.classes) < 2:
            raise PipelineError(
                source,
                f"only one class ({self.classes[0]}) in the labels",
                "A classifier needs two or more.",
            )
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.n_outputs = len(self.classes)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ClassificationTask:
        return cls(read_table(path, ["slide_id", "label"], "labels"), source=str(path))

    def wanted_slides(self) -> list[str]:
        """The labelled slides, by :func:`pipeline.cohort.choose_slides` (the workflow's rule)."""
        table = as_table(self.table, ["slide_id", "case_id", "label"], "labels")
        return chosen_slide_ids(choose_slides(self.type, table))

    def make_bags(self, bank: FeatureBank) -> list[Bag]:
        bags = []
        for row in self.table.itertuples(index=False):
            if row.slide_id in bank:
                bags.append(
                    Bag(row.slide_id, row.case_id, (row.slide_id,), self.index[row.label], bank)
                )
        return bags

    def case_strata(self) -> tuple[pd.Series, pd.Series]:
        strata = self.table.groupby("case_id")["label"].agg(majority)
        return strata, strata

    def loss_fn(self, bag: Bag) -> Callable[[torch.Tensor], torch.Tensor]:
        target = torch.tensor([int(bag.target)])

        def loss(logits: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, target.to(logits.device))

        return loss

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits.float(), dim=1).detach().cpu().numpy()

    def output_columns(self) -> list[str]:
        return [f"score_{c}" for c in self.classes]

    def _labels(self, bags: Sequence[Bag]) -> np.ndarray:
        return np.array([int(b.target) for b in bags], dtype=int)

    def selection_score(self, bags: Sequence[Bag], outputs: np.ndarray) -> float:
        return auc(self._labels(bags), outputs) if len(bags) else float("nan")

    def configure(self, settings: MILSettings) -> None:
        self.threshold_policy = settings.threshold

    def metrics(self, parts, threshold_role):
        """Per role: AUC, accuracy, balanced accuracy, F1 at the Youden threshold of ``threshold_role``
        (or 0.5 under the ``argmax`` policy)."""
        if self.n_outputs == 2 and self.threshold_policy == "argmax":
            self.threshold, threshold_role = 0.5, "argmax"
        elif self.n_outputs == 2 and threshold_role in parts and len(parts[threshold_role][0]):
            bags, out = parts[threshold_role]
            self.threshold = M.youden_threshold(self._labels(bags), out[:, 1])
        elif (
            self.n_outputs == 2 and self.threshold is None
        ):  # no such part: keep a trained threshold
            self.threshold = 0.5
        result: dict[str, Any] = {"threshold": self.threshold, "threshold_from": threshold_role}
        for role, (bags, out) in parts.items():
            result[role] = M.classification_metrics(self._labels(bags), out, self.threshold)
        return result

    def prediction_frame(self, bags, outputs, role):
        return classification_frame(bags, outputs, role, self.classes, self.threshold)

    def metadata(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "classes": self.classes,
            "threshold": self.threshold,
            "positive_class": self.classes[-1] if self.n_outputs == 2 else None,
        }
