"""Summarise a method's folds: mean ± std of the test metrics and the efficiency figures.

Each fold directory's ``metrics.json`` already holds its test metrics computed with the protocol's rules
(threshold from the validation part; see :mod:`pipeline.mil.metrics`), so the summary only aggregates,
and refuses to mix methods, task types or protocols. A summary that includes a ``protocol: paper`` fold
is marked ``optimistic`` with the reason. With repeated CV the folds of every repeat are pooled (a fold
folder inside ``repeat{r}/`` is repeat r), and ``stats`` holds the intervals of
:mod:`pipeline.mil.comparison` (t-interval over the repeats' means; DeLong or case bootstrap on the
pooled out-of-fold predictions).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.layout import fold_repeat
from pipeline.mil.comparison import method_results, method_statistics
from pipeline.mil.folder import FoldFolder
from pipeline.mil.metrics import OPTIMISTIC_NOTE, mean_std
from pipeline.stats import summary_columns
from pipeline.stats.bootstrap import N_BOOT

EFFICIENCY_KEYS = (
    "parameters",
    "train_seconds_per_epoch",
    "peak_rss_mb",
    "peak_gpu_mb",
    "inference_slides_per_second",
)


def _same(folds: list[dict], key: str, dirs: Sequence) -> Any:
    values = {str(f.get(key)) for f in folds}
    if len(values) > 1:
        raise PipelineError(
            "evaluate",
            f"the fold directories mix {key}s ({', '.join(sorted(values))})",
            f"Pass the folds of one method and task ({', '.join(map(str, dirs))}).",
        )
    return folds[0].get(key)


def summarize(fold_dirs: Sequence[str | os.PathLike], n_boot: int = N_BOOT) -> dict[str, Any]:
    """Mean ± std (ddof 0) over folds (× repeats) of every test metric and efficiency figure."""
    if not fold_dirs:
        raise PipelineError("evaluate", "no fold directory given", "Pass the fold{k} directories.")
    folds = [FoldFolder(d).metrics() for d in fold_dirs]
    numbers = [f["fold"] for f in folds]
    repeats = [fold_repeat(d) for d in fold_dirs]
    keys = list(zip(repeats, numbers, strict=True))
    if len(set(keys)) < len(keys):
        raise PipelineError(
            "evaluate", f"(repeat, fold) pairs repeat: {keys}", "Pass each fold once."
        )
    method = _same(folds, "method", fold_dirs)
    task_type = _same(folds, "task_type", fold_dirs)
    optimistic = any(f.get("optimistic") for f in folds)
    metric_names = [
        k
        for k, v in folds[0]["test"].items()
        if isinstance(v, int | float) and k not in ("events", "cases")
    ]
    metrics = {}
    for name in metric_names:
        values = [f["test"].get(name) for f in folds]
        metrics[name] = {**mean_std(values), "values": values}
    efficiency = {}
    for name in EFFICIENCY_KEYS:
        values = [f.get("efficiency", {}).get(name) for f in folds]
        if any(v is not None for v in values):
            efficiency[name] = {**mean_std(values), "values": values}
    summary = {
        "method": method,
        "task_type": task_type,
        "protocol": "paper" if optimistic else "holdout",
        "optimistic": optimistic,
        **({"note": OPTIMISTIC_NOTE} if optimistic else {}),
        "n_folds": len(folds),
        "folds": numbers,
        "repeats": repeats,
        "fold_dirs": [str(d) for d in fold_dirs],
        "metrics": metrics,
        "efficiency": efficiency,
        "precision": sorted({f.get("efficiency", {}).get("precision", "fp32") for f in folds}),
        "per_fold": [
            {
                "repeat": r,
                "fold": f["fold"],
                "test": f["test"],
                "best_epoch": f.get("best_epoch"),
                "epochs_run": f.get("epochs_run"),
                "n_bags": f.get("n_bags"),
            }
            for r, f in zip(repeats, folds, strict=True)
        ],
    }
    summary["definition"] = variant_definition(fold_dirs[0], str(method))
    results = method_results(str(method), fold_dirs)
    summary["stats"] = method_statistics(results, task_type, n_boot=n_boot, seed=folds[0]["seed"])
    return summary


def variant_definition(fold_dir: str | os.PathLike, method: str) -> str:
    """What a variant is (``describe_variant`` of the ``mil.variants`` entry its fold was trained
    with, from ``model.json``); '' for a method, or a fold written before variants were recorded."""
    from pipeline.settings import describe_variant

    try:
        spec = (FoldFolder(fold_dir).model_record().cfg or {}).get("variants", {}).get(method)
    except (OSError, ValueError, AttributeError, PipelineError):
        return ""
    return describe_variant(spec) if isinstance(spec, dict) and "method" in spec else ""


def summary_table(summary_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per ``summary.json`` (method, task, metric mean/std, efficiency means) for a cohort table."""
    rows = []
    for path in summary_paths:
        s = json.loads(Path(path).read_text())
        row: dict[str, Any] = {
            "summary": str(path),
            "method": s["method"],
            "cohort": s.get("cohort", "cv"),
            "task_type": s["task_type"],
            "protocol": s["protocol"],
            "optimistic": s["optimistic"],
            "n_folds": s["n_folds"],
            "definition": s.get("definition", ""),
        }
        for name, m in s["metrics"].items():
            row[f"{name}_mean"], row[f"{name}_std"] = m["mean"], m["std"]
        for name, m in s["efficiency"].items():
            row[name] = m["mean"]
        row.update(s.get("stats", {}))
        rows.append(row)
    table = pd.DataFrame(rows)
    # external rows carry no fold folder: their variant's definition is that of its CV rows
    if not table.empty:
        table["definition"] = table.groupby("method")["definition"].transform(
            lambda d: next((v for v in d if v), "")
        )
    # the statistics columns in the documented order (summary.json stores keys sorted)
    stats = [c for t in dict.fromkeys(table.get("task_type", [])) for c in summary_columns(t)]
    stats = [c for c in dict.fromkeys(stats) if c in table.columns]
    return table[[c for c in table.columns if c not in stats] + stats]


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable line per metric for the log."""
    tag = " (OPTIMISTIC: paper protocol)" if summary["optimistic"] else ""
    parts = [f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in summary["metrics"].items()]
    return f"{summary['method']} over {summary['n_folds']} folds: " + ", ".join(parts) + tag
