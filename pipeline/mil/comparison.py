"""From fold folders to the statistics of :mod:`pipeline.stats`: a method's intervals, its comparison.

The fold folders of one method (or variant) over R repeats × K folds become a
:class:`~pipeline.stats.MethodResults`: one row per (repeat, fold) with its test metrics and the sizes
of its training (train + val) and test parts, and the test rows of every fold's ``predictions.csv``
with a ``repeat`` column. ``wsi-mil evaluate`` stores :func:`method_statistics` in ``summary.json``;
``wsi-mil summary`` and ``wsi-mil cv`` add :func:`comparison` against the task's reference method.
The reference defaults to the first baseline (a method without a teacher) listed in ``mil.methods``
that is a MIL method. Separately, every MIL method is checked against the mean-pool reference
(``meanpool``: a linear model on mean-pooled features) when it ran on the same task and encoder: the
``below_reference`` column and its sentence say when a method is below it by more than noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.layout import fold_repeat, summary_fold_dirs
from pipeline.methods import MEAN_POOL_REFERENCE, default_reference, is_reference_baseline
from pipeline.mil.folder import FoldFolder
from pipeline.stats import MethodResults, compare_methods, summarise_method
from pipeline.stats.bootstrap import N_BOOT


def method_results(name: str, fold_dirs: Sequence[str | os.PathLike]) -> MethodResults:
    """Fold metrics and out-of-fold test predictions of one method's fold folders."""
    rows, preds = [], []
    for d in fold_dirs:
        folder = FoldFolder(d)
        metrics = folder.metrics()
        repeat = fold_repeat(d)
        bags = metrics.get("n_bags") or {}
        test = {k: v for k, v in metrics["test"].items() if isinstance(v, int | float)}
        rows.append(
            {
                "repeat": repeat,
                "fold": int(metrics["fold"]),
                **test,
                "n_train": int(bags.get("train", 0)) + int(bags.get("val", 0)),
                "n_test": int(bags.get("test", 0)),
            }
        )
        pred = folder.predictions()
        if "role" in pred:
            pred = pred[pred["role"] == "test"]
        preds.append(pred.assign(repeat=repeat))
    if not rows:
        raise PipelineError(name, "no fold folder", "Train the folds first.")
    return MethodResults(name, pd.DataFrame(rows), pd.concat(preds, ignore_index=True))


def method_statistics(
    results: MethodResults, task_type: str, *, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """The interval columns of one method (:func:`pipeline.stats.summarise_method`)."""
    return summarise_method(
        results.fold_metrics, results.predictions, task_type, n_boot=n_boot, seed=seed
    )


def comparison(
    reference: MethodResults,
    other: MethodResults,
    task_type: str,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """``other - reference`` in the main metric (:func:`pipeline.stats.compare_methods`)."""
    return compare_methods(reference, other, task_type, n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class SummaryRecord:
    """What the comparisons need of one ``summary.json``: the method, task type and cohort, and where
    its per-fold results are (the fold folders beside it, or an external cohort's prediction files
    ``(repeat, fold, csv, json)``)."""

    method: str
    task_type: str
    cohort: str = "cv"
    fold_dirs: tuple[str, ...] = ()
    files: tuple[tuple[int, int, str, str], ...] = ()

    @property
    def external(self) -> bool:
        return self.cohort.startswith("external")

    @classmethod
    def read(cls, path: str | os.PathLike) -> SummaryRecord:
        data = json.loads(Path(path).read_text())
        files = tuple((int(r), int(k), str(c), str(j)) for r, k, c, j in data.get("files", []))
        return cls(
            method=str(data["method"]),
            task_type=str(data["task_type"]),
            cohort=str(data.get("cohort") or "cv"),
            fold_dirs=tuple(summary_fold_dirs(path, data)),
            files=files,
        )


def add_comparisons(
    table: pd.DataFrame,
    summaries: Sequence[SummaryRecord],
    reference: str | None = None,
    *,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """``table`` (one row per summary, with task, encoder, method) plus the comparison columns.

    Each row is compared with the reference method's row of the same task and encoder (the reference
    row itself and rows without a reference get empty comparison columns). ``reference`` defaults to
    :func:`default_reference` over the methods in the order listed. Where the task and encoder also
    have the mean-pool reference (``meanpool``), every MIL method is checked against it as well
    (:data:`BELOW_REFERENCE_COLUMNS`, :func:`below_reference_columns`), whatever ``reference`` is.
    """
    from pipeline.stats.compare import COMPARISON_COLUMNS

    table = table.copy()
    for col in (*COMPARISON_COLUMNS, *BELOW_REFERENCE_COLUMNS):
        table[col] = None
    if table.empty:
        return table
    if "cohort" not in table:
        table["cohort"] = "cv"
    reference = reference or default_reference(list(dict.fromkeys(table["method"])))
    cache: dict[int, MethodResults] = {}

    def results(i: int) -> MethodResults:
        s = summaries[i]
        if i not in cache and s.external:
            cache[i] = external_results(s.method, list(s.files), s.task_type)
        elif i not in cache:
            cache[i] = method_results(s.method, list(s.fold_dirs))
        return cache[i]

    records: dict[tuple[int, int], dict[str, Any]] = {}

    def compare(r: int, i: int, cohort: str) -> dict[str, Any]:
        if (r, i) not in records:
            task_type = summaries[i].task_type
            if str(cohort).startswith("external"):
                records[r, i] = external_comparison(
                    results(r), results(i), task_type, n_boot=n_boot
                )
            else:
                seed = int(table.loc[i].get("seed") or 0)
                records[r, i] = comparison(
                    results(r), results(i), task_type, n_boot=n_boot, seed=seed
                )
        return records[r, i]

    for (_, _, cohort), part in table.groupby(["task", "encoder", "cohort"], sort=False):
        refs = part.index[part["method"] == reference]
        if len(refs) > 0:
            r = refs[0]
            table.loc[r, "reference"] = reference
            for i in part.index[part.index != r]:
                for key, value in compare(r, i, cohort).items():
                    table.at[i, key] = value
        floors = part.index[part["method"] == MEAN_POOL_REFERENCE]
        if len(floors) > 0:
            for i in part.index[~part["method"].map(is_reference_baseline)]:
                below_reference_columns(table, floors[0], i, compare(floors[0], i, cohort))
    return table


# --- the mean-pool reference ---------------------------------------------------------------------
BELOW_REFERENCE_COLUMNS = (
    "vs_meanpool_diff",
    "vs_meanpool_diff_ci_low",
    "vs_meanpool_diff_ci_high",
    "vs_meanpool_diff_p",
    "below_reference",
    "below_reference_note",
)


def below_reference_columns(table: pd.DataFrame, r: int, i: int, record: dict[str, Any]) -> None:
    """Row ``i`` of ``table`` checked against the mean-pool reference row ``r``.

    Below "by more than noise" = the whole 95 % interval of ``method - meanpool`` lies below 0: the
    over-folds interval (Nadeau-Bengio corrected t) on cross-validation, the paired pooled one on an
    external cohort (the only one there). The note is one sentence with both methods' values.
    """
    kind = "cv" if pd.notna(record.get("diff_cv")) else "pooled"
    est, low, high = (record.get(f"diff_{kind}{s}") for s in ("", "_ci_low", "_ci_high"))
    row, ref = table.loc[i], table.loc[r]
    metric = row.get("main_metric")
    below = bool(high is not None and pd.notna(high) and high < 0)
    table.at[i, "vs_meanpool_diff"] = est
    table.at[i, "vs_meanpool_diff_ci_low"] = low
    table.at[i, "vs_meanpool_diff_ci_high"] = high
    table.at[i, "vs_meanpool_diff_p"] = record.get(f"diff_{kind}_p")
    table.at[i, "below_reference"] = below
    table.at[i, "below_reference_note"] = reference_sentence(
        row, ref, metric, below, est, low, high
    )


def _value(row: pd.Series, metric: Any) -> str:
    """``0.612 [0.520, 0.700]``: a row's main metric with its interval (CV mean, else pooled)."""
    for value in (f"{metric}_mean", f"{metric}_pooled"):
        low, high = (
            (f"{metric}_ci_low", f"{metric}_ci_high")
            if value.endswith("_mean")
            else (f"{value}_ci_low", f"{value}_ci_high")
        )
        if pd.notna(row.get(value)):
            return f"{row[value]:.3f} [{_fmt(row.get(low))}, {_fmt(row.get(high))}]"
    return "–"


def _fmt(value: Any, sign: str = "") -> str:
    return "–" if value is None or pd.isna(value) else f"{float(value):{sign}.3f}"


def reference_sentence(row, ref, metric, below: bool, est, low, high) -> str:
    """The report's words for one method against the mean-pool reference."""
    from pipeline.stats.compare import DISPLAY

    name = DISPLAY.get(str(metric), str(metric))
    diff = f"{_fmt(est, '+')} {name} (95 % CI {_fmt(low, '+')} to {_fmt(high, '+')})"
    head = f"{row['method']} ({name} {_value(row, metric)})"
    meanpool = f"the mean-pool reference {ref['method']} ({_value(ref, metric)})"
    if below:
        return f"{head} is below {meanpool} by more than noise: {diff}"
    if low is not None and pd.notna(low) and low > 0:
        return f"{head} is above {meanpool} by more than noise: {diff}"
    return f"{head} is within noise of {meanpool}: {diff}"


# --- external cohort -------------------------------------------------------------------------------
def ensemble(predictions: pd.DataFrame, task_type: str) -> pd.DataFrame:
    """One row per slide (classification) or case (survival) of one repeat: the fold models' mean
    scores (or risk); the hard prediction is the fold models' majority (ties: first class in order)."""
    key = "case_id" if task_type == "survival" else "slide_id"
    numeric = [c for c in predictions if c.startswith(("score_", "risk", "survival_"))]
    first = [c for c in predictions if c not in numeric and c not in ("prediction", "fold")]
    grouped = predictions.groupby(key, sort=True)
    out = grouped[first].first().drop(columns=[key], errors="ignore").join(grouped[numeric].mean())
    if "prediction" in predictions:
        out["prediction"] = grouped["prediction"].agg(lambda s: s.astype(str).mode().iloc[0])
    return out.reset_index()


def external_results(
    name: str, files: Sequence[tuple[int, int, str, str]], task_type: str
) -> MethodResults:
    """``files`` = (repeat, fold, predictions CSV, metrics JSON) of each fold model on the external
    cohort: fold metrics as each model scored it, and per repeat the ensemble of the fold models."""
    import json as _json

    rows, preds = [], []
    for repeat, fold, csv_path, json_path in files:
        with open(json_path) as handle:
            result = _json.load(handle)
        metrics = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float)}
        rows.append({"repeat": repeat, "fold": fold, **metrics, "n_test": result["bags"]})
        preds.append(pd.read_csv(csv_path, dtype={"case_id": str}).assign(repeat=repeat, fold=fold))
    if not rows:
        raise PipelineError(name, "no external predictions", "Run the fold models on the cohort.")
    frame = pd.concat(preds, ignore_index=True)
    pooled = [ensemble(part, task_type).assign(repeat=r) for r, part in frame.groupby("repeat")]
    return MethodResults(name, pd.DataFrame(rows), pd.concat(pooled, ignore_index=True))


def external_summary(
    name: str,
    files: Sequence[tuple[int, int, str, str]],
    task_type: str,
    n_boot: int = N_BOOT,
    cohort: str = "external",
) -> dict[str, Any]:
    """``summary.json`` of a method on the external cohort (the same shape as the CV summary);
    ``cohort="external_all_cases"`` for the one all-cases model's file (fold -1)."""
    import json as _json

    from pipeline.mil.metrics import mean_std

    results = external_results(name, files, task_type)
    folds = results.fold_metrics
    optimistic = False
    for *_, json_path in files:
        with open(json_path) as handle:
            optimistic |= bool(_json.load(handle).get("optimistic_model"))
    metric_cols = [c for c in folds if c not in ("repeat", "fold", "n_test", "events", "cases")]
    return {
        "method": name,
        "task_type": task_type,
        "cohort": cohort,
        "protocol": "paper" if optimistic else "holdout",
        "optimistic": optimistic,
        "n_folds": len(folds),
        "folds": folds["fold"].tolist(),
        "repeats": folds["repeat"].tolist(),
        "files": [list(map(str, f)) for f in files],
        "metrics": {
            m: {**mean_std(folds[m].tolist()), "values": folds[m].tolist()} for m in metric_cols
        },
        "efficiency": {},
        "per_fold": [
            {
                "repeat": int(r["repeat"]),
                "fold": int(r["fold"]),
                "test": {m: r[m] for m in metric_cols},
            }
            for _, r in folds.iterrows()
        ],
        "stats": method_statistics(results, task_type, n_boot=n_boot),
    }


def external_comparison(
    reference: MethodResults, other: MethodResults, task_type: str, *, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """``other - reference`` on the external cohort: the paired test on the fold models' ensembles.

    The corrected resampled t-test is for CV test folds; on one fixed external cohort the fold models
    differ only in their training data, so only the pooled paired test is reported.
    """
    from pipeline.stats.compare import DISPLAY, MAIN_METRIC, _pooled_rows, paired_pooled
    from pipeline.stats.repeated import in_words

    metric = MAIN_METRIC[task_type]
    a, _ = _pooled_rows(reference.predictions, task_type)
    b, _ = _pooled_rows(other.predictions, task_type)
    pooled = paired_pooled(a, b, task_type, metric, n_boot=n_boot)
    return {
        "reference": reference.name,
        "diff_pooled": pooled["estimate"],
        "diff_pooled_ci_low": pooled["ci_low"],
        "diff_pooled_ci_high": pooled["ci_high"],
        "diff_pooled_p": pooled["p_value"],
        "diff_pooled_test": pooled["test"],
        "verdict_pooled": in_words(pooled, DISPLAY.get(metric, metric)),
    }
