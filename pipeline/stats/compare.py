"""The summary's statistics: one flat record per method, one per comparison, with stable column names.

Two views of the same cross-validation, both reported:

* **over folds** (``fold_metrics``: one row per repeat × fold with its test metrics): the mean with a
  t-interval over the repeats' means, and for a comparison the Nadeau–Bengio corrected t-test
  (:mod:`pipeline.stats.repeated`);
* **pooled** (``predictions``: the out-of-fold test rows, each case predicted once per repeat by the
  model that did not see it): one interval on all cases together — DeLong for a binary AUC with one
  row per case, the case bootstrap otherwise (multi-class macro AUC, several slides per case,
  accuracy, balanced accuracy, F1, C-index) — and for a comparison the paired DeLong test or the paired
  case bootstrap. With several repeats, the pooled view uses the first repeat (``pooled_repeat``).

Hard predictions (accuracy, F1) are the ``prediction`` column, made with each fold's own threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.stats import bootstrap as B
from pipeline.stats import delong as D
from pipeline.stats import metrics as SM
from pipeline.stats import repeated as R
from pipeline.stats.metrics import CLASSIFICATION_METRICS

MAIN_METRIC = {"classification": "auc", "survival": "c_index"}
DISPLAY = {"auc": "AUC", "c_index": "C-index", "accuracy": "accuracy", "f1": "F1"}
METRICS = {"classification": CLASSIFICATION_METRICS, "survival": ("c_index",)}  # all in [0, 1]
STAT_SUFFIXES = (
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "pooled",
    "pooled_ci_low",
    "pooled_ci_high",
    "pooled_ci_method",
)
METHOD_COLUMNS = (
    "main_metric",
    "n_repeats",
    "n_folds",
    "cv_interval_over",
    "pooled_repeat",
    "n_cases_pooled",
    "n_boot",
    "seed",
)
COMPARISON_COLUMNS = (
    "reference",
    "diff_cv",
    "diff_cv_ci_low",
    "diff_cv_ci_high",
    "diff_cv_p",
    "diff_cv_test",
    "diff_pooled",
    "diff_pooled_ci_low",
    "diff_pooled_ci_high",
    "diff_pooled_p",
    "diff_pooled_test",
    "verdict_cv",
    "verdict_pooled",
)


def summary_columns(task_type: str) -> list[str]:
    """The statistics columns ``summary.csv`` gains for a task type, in order."""
    per_metric = [f"{m}_{s}" for m in _metrics(task_type) for s in STAT_SUFFIXES]
    return [*METHOD_COLUMNS, *per_metric, *COMPARISON_COLUMNS]


@dataclass(frozen=True)
class MethodResults:
    """A method's (or variant's) fold metrics and out-of-fold test predictions."""

    name: str
    fold_metrics: pd.DataFrame
    predictions: pd.DataFrame


def _metrics(task_type: str) -> tuple[str, ...]:
    if task_type not in METRICS:
        raise PipelineError("statistics", f"unknown task type {task_type!r}")
    return METRICS[task_type]


def _fold_table(fold_metrics) -> pd.DataFrame:
    table = pd.DataFrame(fold_metrics).copy()
    if "fold" not in table:
        raise PipelineError("statistics", "fold metrics have no 'fold' column")
    if "repeat" not in table:
        table["repeat"] = 0
    if table.duplicated(["repeat", "fold"]).any():
        raise PipelineError("statistics", "a (repeat, fold) appears twice in the fold metrics")
    return table.sort_values(["repeat", "fold"]).reset_index(drop=True)


def fold_grid(table: pd.DataFrame, metric: str) -> np.ndarray:
    """``(R, K)`` array of one metric (NaN where a fold is missing or undefined)."""
    grid = table.pivot(index="repeat", columns="fold", values=metric)
    return grid.to_numpy(dtype=float)


def _require(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table]
    if missing:
        raise PipelineError("statistics", f"{what} lack column(s) {', '.join(missing)}")


def _pooled_rows(pred, task_type: str) -> tuple[pd.DataFrame, int | None]:
    """The test rows of the first repeat, each slide (classification) or case (survival) once."""
    pred = pd.DataFrame(pred)
    if task_type == "survival":
        _require(pred, ("case_id", "time", "event", "risk"), "survival predictions")
    else:
        _require(pred, ("case_id", "label", "prediction"), "classification predictions")
        if not any(c.startswith("score_") for c in pred.columns):
            raise PipelineError("statistics", "classification predictions have no score_ column")
    if "role" in pred:
        pred = pred[pred["role"] == "test"]
    first = None
    if "repeat" in pred and len(pred):
        first = int(pred["repeat"].min())
        pred = pred[pred["repeat"] == first]
    if pred.empty:
        raise PipelineError("statistics", "no out-of-fold test predictions to pool")
    key = _key(pred, task_type)
    if pred[key].duplicated().any():
        twice = pred.loc[pred[key].duplicated(), key].iloc[0]
        raise PipelineError(
            "statistics",
            f"{key} {twice} is predicted twice in the pooled test rows of one repeat",
            "Each case must be in the test part of exactly one fold per repeat.",
        )
    return pred.reset_index(drop=True), first


def _key(pred: pd.DataFrame, task_type: str) -> str:
    return "slide_id" if task_type == "classification" and "slide_id" in pred else "case_id"


def _class_arrays(pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label and prediction indices, and the ``score_<class>`` matrix (class order = column order)."""
    score_cols = [c for c in pred.columns if c.startswith("score_")]
    classes = [c[len("score_") :] for c in score_cols]
    index = {c: i for i, c in enumerate(classes)}
    for col in ("label", "prediction"):
        unknown = set(pred[col].astype(str)) - set(classes)
        if unknown:
            raise PipelineError("statistics", f"{col} value(s) {sorted(unknown)} not in {classes}")
    y = pred["label"].astype(str).map(index).to_numpy(dtype=int)
    hard = pred["prediction"].astype(str).map(index).to_numpy(dtype=int)
    return y, hard, pred[score_cols].to_numpy(dtype=float)


def _one_row_per_case(pred: pd.DataFrame) -> bool:
    return not pred["case_id"].duplicated().any()


def _pooled_inputs(pred: pd.DataFrame, task_type: str, metric: str):
    """(metric callable, arrays) for one metric of pooled predictions."""
    if task_type == "survival":
        return SM.C_INDEX, (
            pred["time"].to_numpy(float),
            pred["event"].to_numpy(int),
            pred["risk"].to_numpy(float),
        )
    y, hard, scores = _class_arrays(pred)
    if metric == "auc":
        return SM.AUC, (y, scores)
    return SM.hard_metric(metric, scores.shape[1]), (y, hard)


def _delong_ok(pred: pd.DataFrame, task_type: str, metric: str) -> bool:
    """DeLong needs a binary AUC, independent cases (one row each) and both classes present."""
    if task_type != "classification" or metric != "auc":
        return False
    n_scores = sum(c.startswith("score_") for c in pred.columns)
    return n_scores == 2 and _one_row_per_case(pred) and pred["label"].nunique() == 2


def pooled_interval(pred, task_type, metric, *, n_boot=B.N_BOOT, level=0.95, seed=0) -> dict:
    """One metric of pooled predictions with its interval (DeLong or case bootstrap)."""
    if _delong_ok(pred, task_type, metric):
        y, _, scores = _class_arrays(pred)
        return D.delong_ci(y, scores[:, 1], level)
    fn, arrays = _pooled_inputs(pred, task_type, metric)
    return B.bootstrap_ci(
        fn, arrays, pred["case_id"].tolist(), n_boot=n_boot, level=level, seed=seed
    )


def summarise_method(
    fold_metrics,
    predictions,
    task_type: str,
    *,
    n_boot: int = B.N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Flat record for one method: CV mean/std/interval and pooled estimate/interval of every metric."""
    folds = _fold_table(fold_metrics)
    pred, first = _pooled_rows(predictions, task_type)
    main = MAIN_METRIC[task_type]
    _require(folds, (main,), "fold metrics")
    row: dict = {
        "main_metric": main,
        "pooled_repeat": first,
        "n_cases_pooled": int(pred["case_id"].nunique()),
    }
    row.update({"n_boot": n_boot, "seed": seed})
    for metric in _metrics(task_type):
        if metric not in folds:
            continue
        cv = R.repeated_cv_interval(fold_grid(folds, metric), level, bounds=(0.0, 1.0))
        if metric == main:
            row.update(
                n_repeats=cv["n_repeats"],
                n_folds=cv["n_folds"],
                cv_interval_over=cv["interval_over"],
            )
        pooled = pooled_interval(pred, task_type, metric, n_boot=n_boot, level=level, seed=seed)
        row.update(
            {
                f"{metric}_mean": cv["mean"],
                f"{metric}_std": cv["std"],
                f"{metric}_ci_low": cv["ci_low"],
                f"{metric}_ci_high": cv["ci_high"],
                f"{metric}_pooled": pooled["estimate"],
                f"{metric}_pooled_ci_low": pooled["ci_low"],
                f"{metric}_pooled_ci_high": pooled["ci_high"],
                f"{metric}_pooled_ci_method": pooled["method"],
            }
        )
    return row


def _aligned(
    ref: pd.DataFrame, other: pd.DataFrame, task_type: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    key = _key(ref, task_type)
    a, b = ref.set_index(key), other.set_index(key)
    if set(a.index) != set(b.index):
        raise PipelineError(
            "statistics",
            f"the two methods' pooled predictions do not cover the same {key}s once each",
            "Compare methods run on the same folds (same split files).",
        )
    b = b.loc[a.index]
    truth = ["label"] if task_type == "classification" else ["time", "event"]
    if not (a[truth].astype(str).to_numpy() == b[truth].astype(str).to_numpy()).all():
        raise PipelineError(
            "statistics", "the two methods' predictions disagree on the true labels"
        )
    return a.reset_index(), b.reset_index()


def paired_pooled(ref, other, task_type, metric, *, n_boot=B.N_BOOT, level=0.95, seed=0) -> dict:
    """``other - ref`` on pooled predictions: paired DeLong or paired case bootstrap."""
    a, b = _aligned(ref, other, task_type)
    if _delong_ok(a, task_type, metric):
        y, _, s_ref = _class_arrays(a)
        _, _, s_other = _class_arrays(b)
        return D.delong_paired(y, s_ref[:, 1], s_other[:, 1], level)
    fn, arrays_ref = _pooled_inputs(a, task_type, metric)
    _, arrays_other = _pooled_inputs(b, task_type, metric)
    cases = a["case_id"].tolist()
    return B.paired_bootstrap(
        fn, arrays_ref, arrays_other, cases, n_boot=n_boot, level=level, seed=seed
    )


def _train_test_sizes(folds: pd.DataFrame, n_train, n_test) -> tuple[float, float]:
    if n_train is None:
        n_train = folds["n_train"].mean() if "n_train" in folds else None
    if n_test is None:
        n_test = folds["n_test"].mean() if "n_test" in folds else None
    if n_train is None or n_test is None:
        raise PipelineError(
            "statistics",
            "the corrected t-test needs the training and test set sizes",
            "Give n_train/n_test columns in the fold metrics or pass them.",
        )
    return float(np.mean(n_train)), float(np.mean(n_test))


def compare_methods(
    ref: MethodResults,
    other: MethodResults,
    task_type: str,
    *,
    n_train=None,
    n_test=None,
    n_boot: int = B.N_BOOT,
    level: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Flat record ``other - ref`` in the main metric: corrected CV t-test and pooled paired test."""
    metric = MAIN_METRIC[task_type]
    fa, fb = _fold_table(ref.fold_metrics), _fold_table(other.fold_metrics)
    for name, table in ((ref.name, fa), (other.name, fb)):
        _require(table, (metric,), f"the fold metrics of {name}")
    if set(zip(fa["repeat"], fa["fold"], strict=True)) != set(
        zip(fb["repeat"], fb["fold"], strict=True)
    ):
        raise PipelineError(
            "statistics", f"{ref.name} and {other.name} were not run on the same folds"
        )
    diffs = fold_grid(fb, metric) - fold_grid(fa, metric)
    n_tr, n_te = _train_test_sizes(fa, n_train, n_test)
    cv = R.corrected_resampled_ttest(diffs, n_tr, n_te, level, bounds=(-1.0, 1.0))
    pa, first_a = _pooled_rows(ref.predictions, task_type)
    pb, first_b = _pooled_rows(other.predictions, task_type)
    if first_a != first_b:
        raise PipelineError(
            "statistics",
            f"pooled predictions come from repeat {first_a} ({ref.name}) and {first_b} ({other.name})",
            "Compare methods on the same repeats.",
        )
    pooled = paired_pooled(pa, pb, task_type, metric, n_boot=n_boot, level=level, seed=seed)
    return {
        "reference": ref.name,
        "diff_cv": cv["estimate"],
        "diff_cv_ci_low": cv["ci_low"],
        "diff_cv_ci_high": cv["ci_high"],
        "diff_cv_p": cv["p_value"],
        "diff_cv_test": cv["test"],
        "diff_pooled": pooled["estimate"],
        "diff_pooled_ci_low": pooled["ci_low"],
        "diff_pooled_ci_high": pooled["ci_high"],
        "diff_pooled_p": pooled["p_value"],
        "diff_pooled_test": pooled["test"],
        "verdict_cv": R.in_words(cv, DISPLAY.get(metric, metric), alpha),
        "verdict_pooled": R.in_words(pooled, DISPLAY.get(metric, metric), alpha),
    }
