"""Survival (table ``case_id,time,event``, slides mapped to cases by a ``slide_id,case_id`` table): one
bag per case, all its slides concatenated; discrete-time NLL over quantile bins; Harrell's C-index
(see :mod:`pipeline.mil.survival`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.cohort import choose_slides
from pipeline.log import get_logger
from pipeline.mil import survival as S
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.prediction_frames import survival_frame
from pipeline.mil.task_base import Task, chosen_slide_ids
from pipeline.mil.task_tables import as_table, clean_survival, read_table
from pipeline.stats.metrics import concordance_index

log = get_logger("mil.task")


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
        return chosen_slide_ids(choose_slides(self.type, records, slides))

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
