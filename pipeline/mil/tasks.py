"""Pluggable MIL tasks: what a bag is, how its target is encoded, the loss, the outputs and the metrics.

The trainer, evaluator and predictor are written once against :class:`Task`; a task supplies

* tables → bags: ``wanted_slides()`` (which feature stores to load) and ``make_bags(bank)``;
* ``case_strata()`` for the splits (one stratum label per case);
* ``fit(train_bags)`` for label encodings learnt on the training part (survival time bins);
* ``loss(logits, bag)``, ``outputs(logits)`` (score rows) and ``selection_score`` (higher is better);
* ``metrics(...)``, ``prediction_frame(...)`` and ``metadata()`` / :func:`task_from_metadata` so a saved
  model can be rebuilt for prediction.

Classification (table ``slide_id,case_id,label``): one bag per slide; classes are the sorted label values
(numeric order when all are numbers) and the positive class of a binary task is the last one.
Survival (table ``case_id,time,event``, slides mapped to cases by a ``slide_id,case_id`` table): one bag
per case, all its slides concatenated; see :mod:`pipeline.mil.survival`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline import layout
from pipeline.cohort import TASK_TYPES, choose_slides
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil import metrics as M
from pipeline.mil import survival as S
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.prediction_frames import classification_frame, survival_frame
from pipeline.mil.task_tables import (
    as_table,
    clean_survival,
    detect_task_type,
    label_str,
    majority,
    read_table,
    refuse_repeats,
    sort_labels,
)
from pipeline.settings import MILSettings
from pipeline.stats.metrics import auc, concordance_index

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


# --- classification ---------------------------------------------------------------------------------
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
        return _chosen(choose_slides(self.type, table))

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


# --- survival ---------------------------------------------------------------------------------------
class SurvivalTask(Task):
    """Case-level bags (all slides of a case); discrete-time NLL over quantile bins; Harrell's C-index."""

    type = "survival"
    metric_name = "c_index"

    def __init__(
        self,
        table: pd.DataFrame | None = None,
        slides: pd.DataFrame | None = None,
        n_bins: int = 4,
        edges: Sequence[float] | None = None,
        source: str = "survival",
    ) -> None:
        self.n_bins = int(n_bins)
        self.edges = None if edges is None else np.asarray(edges, dtype=float)
        # one output per configured bin, even when tied quantiles merged some edges (extra bins stay
        # empty); keeps every fold's model the same shape
        self.n_outputs = self.n_bins
        self.source = source
        self.table = (
            table if table is not None else pd.DataFrame(columns=["case_id", "time", "event"])
        )
        if table is not None:
            self.table = clean_survival(table, source)
        self.slides = slides  # slide_id -> case_id mapping (None: slide ids are case ids)

    @classmethod
    def from_csv(cls, path, slides_table=None, n_bins: int = 4) -> SurvivalTask:
        table = read_table(path, ["case_id", "time", "event"], "survival")
        slides = None
        if slides_table is not None:
            slides = read_table(slides_table, ["slide_id", "case_id"], "slides")[
                ["slide_id", "case_id"]
            ]
        elif "slide_id" in table.columns:
            slides = table[["slide_id", "case_id"]]
            table = table.drop(columns="slide_id").drop_duplicates("case_id")
        if slides is not None:
            slides = slides.drop_duplicates("slide_id").reset_index(drop=True)
        return cls(table, slides, n_bins=n_bins, source=str(path))

    def _mapping(self) -> pd.DataFrame:
        if self.slides is None:
            return pd.DataFrame(
                {"slide_id": self.table["case_id"], "case_id": self.table["case_id"]}
            )
        return self.slides

    def wanted_slides(self) -> list[str]:
        """The slides of cases with a survival record, by :func:`pipeline.cohort.choose_slides`
        (the workflow's rule); one warning per slide left out."""
        records = as_table(self.table, ["case_id", "time", "event"], self.source)
        slides = as_table(self._mapping(), ["slide_id", "case_id"], "slides")
        return _chosen(choose_slides(self.type, records, slides))

    def make_bags(self, bank: FeatureBank) -> list[Bag]:
        mapping = self._mapping()
        by_case = mapping[mapping["slide_id"].map(lambda s: s in bank)].groupby("case_id")[
            "slide_id"
        ]
        slides = {case: tuple(sorted(group)) for case, group in by_case}
        bags = []
        for row in self.table.itertuples(index=False):
            if row.case_id not in slides:
                log.warning("case %s: no slide with features; left out", row.case_id)
                continue
            target = (self._bin(row.time), float(row.time), int(row.event))
            bags.append(Bag(row.case_id, row.case_id, slides[row.case_id], target, bank))
        return bags

    def _bin(self, time: float) -> int:
        return -1 if self.edges is None else int(S.assign_bins([time], self.edges)[0])

    def case_strata(self) -> tuple[pd.Series, pd.Series]:
        t = self.table.set_index("case_id")
        edges = S.quantile_bin_edges(t["time"], t["event"], self.n_bins)
        bins = S.assign_bins(t["time"], edges)
        strata = pd.Series(
            [f"event{e}_bin{b}" for e, b in zip(t["event"], bins, strict=True)], index=t.index
        )
        return strata, t["event"].map(lambda e: f"event{e}")

    def fit(self, train_bags: Sequence[Bag]) -> None:
        """Bin edges from the training cases' uncensored times; re-encode every bag's bin."""
        times = [b.target[1] for b in train_bags]
        events = [b.target[2] for b in train_bags]
        self.edges = S.quantile_bin_edges(times, events, self.n_bins)

    def encode(self, bags: Sequence[Bag]) -> None:
        for b in bags:
            if b.target is not None:
                b.target = (self._bin(b.target[1]), b.target[1], b.target[2])

    def loss_fn(self, bag: Bag) -> Callable[[torch.Tensor], torch.Tensor]:
        k, _, event = bag.target
        k = min(k, self.n_outputs - 1)
        bins, events = torch.tensor([k]), torch.tensor([float(event)])

        def loss(logits: torch.Tensor) -> torch.Tensor:
            return S.nll_loss(logits, bins.to(logits.device), events.to(logits.device))

        return loss

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        logits = logits.float().detach()
        surv = S.survival_curve(logits)
        return torch.cat([-surv.sum(dim=1, keepdim=True), surv], dim=1).cpu().numpy()

    def output_columns(self) -> list[str]:
        return ["risk"] + [f"survival_{k}" for k in range(self.n_outputs)]

    @staticmethod
    def _tte(bags: Sequence[Bag]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.array([b.target[1] for b in bags], dtype=float),
            np.array([b.target[2] for b in bags], dtype=int),
        )

    def selection_score(self, bags, outputs) -> float:
        if not len(bags):
            return float("nan")
        t, e = self._tte(bags)
        return concordance_index(t, e, np.asarray(outputs)[:, 0])

    def metrics(self, parts, threshold_role):
        result: dict[str, Any] = {}
        for role, (bags, out) in parts.items():
            t, e = self._tte(bags)
            result[role] = {
                "c_index": concordance_index(t, e, np.asarray(out)[:, 0])
                if len(bags)
                else float("nan"),
                "events": int(e.sum()),
                "cases": len(bags),
            }
        return result

    def prediction_frame(self, bags, outputs, role):
        return survival_frame(bags, outputs, role, self.output_columns())

    def metadata(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "n_bins": self.n_bins,
            "bin_edges": None if self.edges is None else [float(x) for x in self.edges],
        }


# --- construction -----------------------------------------------------------------------------------
def _chosen(chosen) -> list[str]:
    """The slide ids of a :class:`pipeline.cohort.TaskSlides`, its notes logged as warnings."""
    for note in chosen.notes:
        log.warning("%s", note)
    return chosen.slide_ids


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
