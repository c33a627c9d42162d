"""From fold folders to the statistics of :mod:`pipeline.stats`: a method's intervals, its comparison.

The fold folders of one method (or variant) over R repeats × K folds become a
:class:`~pipeline.stats.MethodResults`: one row per (repeat, fold) with its test metrics and the sizes
of its training (train + val) and test parts, and the test rows of every fold's ``predictions.csv``
with a ``repeat`` column. ``wsi-mil evaluate`` stores :func:`method_statistics` in ``summary.json``;
``wsi-mil summary`` and ``wsi-mil cv`` add :func:`comparison` against the task's reference method.
The reference defaults to the first baseline (a method without a teacher) listed in ``mil.methods``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.layout import fold_name, fold_repeat, repeat_name
from pipeline.methods import default_reference
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


def summary_fold_dirs(summary_json: str | os.PathLike, summary: dict[str, Any]) -> list[str]:
    """The fold folders of a ``summary.json``, found next to it (``[repeat{r}/]fold{k}``), so a
    results folder that was moved or a summary made from relative paths still finds them."""
    base = os.path.dirname(os.path.abspath(summary_json))
    folds = summary.get("folds", [])
    repeats = summary.get("repeats") or [0] * len(folds)
    nested = max(repeats, default=0) > 0
    return [
        os.path.join(base, *([repeat_name(r)] if nested else []), fold_name(k))
        for r, k in zip(repeats, folds, strict=True)
    ]


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


def add_comparisons(
    table: pd.DataFrame,
    summaries: Sequence[dict[str, Any]],
    reference: str | None = None,
    *,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """``table`` (one row per summary, with task, encoder, method) plus the comparison columns.

    Each row is compared with the reference method's row of the same task and encoder (the reference
    row itself and rows without a reference get empty comparison columns). ``reference`` defaults to
    :func:`default_reference` over the methods in the order listed.
    """
    from pipeline.stats.compare import COMPARISON_COLUMNS

    table = table.copy()
    for col in COMPARISON_COLUMNS:
        table[col] = None
    if table.empty:
        return table
    reference = reference or default_reference(list(dict.fromkeys(table["method"])))
    cache: dict[int, MethodResults] = {}

    def results(i: int) -> MethodResults:
        if i not in cache:
            cache[i] = method_results(summaries[i]["method"], summaries[i]["fold_dirs"])
        return cache[i]

    for (_, _), part in table.groupby(["task", "encoder"], sort=False):
        refs = part.index[part["method"] == reference]
        if len(refs) == 0:
            continue
        r = refs[0]
        for i in part.index:
            if i == r:
                table.loc[i, "reference"] = reference
                continue
            record = comparison(
                results(r),
                results(i),
                summaries[i]["task_type"],
                n_boot=n_boot,
                seed=int(table.loc[i].get("seed") or 0),
            )
            for key, value in record.items():
                table.at[i, key] = value
    return table
