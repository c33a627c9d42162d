"""The report's comparison part of a task: per-fold dots per method, intervals, paired comparisons.

Reads only what ``wsi-mil summary`` wrote (``summary.csv``: the columns of :mod:`pipeline.stats`)
and each method's ``summary.json`` (its per-fold values); computes nothing new. Every number is
shown next to the protocol it was made under (``holdout``, or ``paper`` marked optimistic), and
each comparison carries the sentence of :func:`pipeline.stats.repeated.in_words`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.layout import Layout
from pipeline.log import get_logger
from pipeline.methods import MEAN_POOL_REFERENCE, is_reference_baseline
from pipeline.report import html

log = get_logger("report")

NAMES = {"auc": "AUC", "c_index": "C-index"}


def _protocol(row: pd.Series) -> str:
    text = html.esc(row.get("protocol", ""))
    if bool(row.get("optimistic", False)):
        text += ' <span class="badge" title="the test fold chose the model">optimistic</span>'
    return text


def _method(row: pd.Series) -> str:
    """The method's name with its role (the mean-pool reference, a reference baseline) and, for a
    variant, what it changes (``definition``), so an ablation row reads without the config."""
    method = str(row["method"])
    name = html.esc(method)
    if method == MEAN_POOL_REFERENCE:
        name += ' <span class="badge" title="linear model on bag means">reference</span>'
    elif is_reference_baseline(method):
        name += ' <span class="small">(reference baseline)</span>'
    definition = row.get("definition")
    if isinstance(definition, str) and definition:
        name += f"<br><span class='small'>{html.esc(definition)}</span>"
    return name


def _interval(row: pd.Series, value: str, low: str | None = None, high: str | None = None) -> str:
    """``estimate [low, high]`` of three columns (default ``{value}_ci_low`` / ``_ci_high``)."""
    estimate = _num(row.get(value))
    if estimate is None:
        return "–"
    lo, hi = _num(row.get(low or f"{value}_ci_low")), _num(row.get(high or f"{value}_ci_high"))
    return f"{html.fmt(estimate)} <span class='small'>[{html.fmt(lo)}, {html.fmt(hi)}]</span>"


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def per_fold_values(results: str | os.PathLike, row: pd.Series, metric: str) -> pd.DataFrame:
    """``repeat, fold, value`` of one method's main metric, from its ``summary.json``."""
    path = Path(Layout(str(results)).summary_json(row["task"], row["encoder"], row["method"]))
    if not path.is_file():
        return pd.DataFrame(columns=["repeat", "fold", "value"])
    summary = json.loads(path.read_text())
    return pd.DataFrame(
        [
            {"repeat": f.get("repeat", 0), "fold": f["fold"], "value": f["test"].get(metric)}
            for f in summary.get("per_fold", [])
        ]
    )


def fold_dots(results: str | os.PathLike, part: pd.DataFrame) -> html.Figure | None:
    """One column of dots per method (one dot per repeat × fold, coloured by repeat), with the CV
    mean and its interval, so the spread between folds is visible next to the interval."""
    if part.empty or "main_metric" not in part:
        return None
    metric = (
        str(part["main_metric"].dropna().iloc[0]) if part["main_metric"].notna().any() else None
    )
    if metric is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{r['encoder']}\n{r['method']}" for _, r in part.iterrows()]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(part) + 1.5), 3.2))
    rng = np.random.default_rng(0)
    for x, (_, row) in enumerate(part.iterrows()):
        values = per_fold_values(results, row, metric)
        if not values.empty:
            jitter = rng.uniform(-0.12, 0.12, len(values))
            ax.scatter(x + jitter, values["value"], c=values["repeat"], cmap="tab10", vmin=0,
                       vmax=9, s=16, alpha=0.8, zorder=2)  # fmt: skip
        mean, low, high = (_num(row.get(f"{metric}_{k}")) for k in ("mean", "ci_low", "ci_high"))
        if mean is not None:
            ax.hlines(mean, x - 0.25, x + 0.25, color="black", zorder=3)
        if low is not None and high is not None:
            ax.vlines(x + 0.3, low, high, color="black", lw=1.5, zorder=3)
    reference_lines(ax, part, metric)
    ax.set_xticks(range(len(part)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(NAMES.get(metric, metric))
    ax.grid(axis="y", alpha=0.3)
    title = NAMES.get(metric, metric)
    protocols = ", ".join(sorted(set(part["protocol"].astype(str))))
    png = html_png(fig)
    return html.Figure(
        f"{title} per fold ({protocols} protocol)",
        png,
        "One dot per test fold (colour = repeat); bar = mean over folds × repeats; line = its 95 % "
        "interval (t-interval over the repeats' means; with one repeat, over the folds). Dashed "
        "line: the mean-pool reference's mean (meanpool, per encoder), where it ran.",
    )


def reference_lines(ax, part: pd.DataFrame, metric: str) -> None:
    """A dashed line at the mean-pool reference's mean across the columns of its encoder."""
    positions = pd.Series(range(len(part)), index=part.index)
    for _, group in part.groupby("encoder", sort=False):
        refs = group[group["method"] == MEAN_POOL_REFERENCE]
        mean = _num(refs.iloc[0].get(f"{metric}_mean")) if len(refs) else None
        if mean is not None:
            xs = positions[group.index]
            ax.hlines(mean, xs.min() - 0.4, xs.max() + 0.4, colors="grey", linestyles="--",
                      lw=1, zorder=1, label="mean-pool reference")  # fmt: skip


def html_png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def intervals_table(part: pd.DataFrame) -> str:
    """Main metric of each method: CV mean with its interval and the pooled estimate with its own."""
    if "main_metric" not in part or part["main_metric"].isna().all():
        return ""
    metric = str(part["main_metric"].dropna().iloc[0])
    name = NAMES.get(metric, metric)
    rows = [
        [
            html.esc(r["encoder"]),
            _method(r),
            html.esc(f"{int(r['n_repeats'])} × {int(r['n_folds'])}")
            if pd.notna(r.get("n_repeats"))
            else "–",
            _interval(r, f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high"),
            _interval(r, f"{metric}_pooled")
            + f" <span class='small'>{html.esc(r.get(f'{metric}_pooled_ci_method', ''))}</span>",
            _versus_reference(r),
            _protocol(r),
        ]
        for _, r in part.iterrows()
    ]  # fmt: skip
    return "<h4>Intervals</h4>" + html.table(
        ["encoder", "method", "repeats × folds", f"{name} mean [95 % CI]",
         f"{name} pooled out-of-fold [95 % CI]", "vs mean-pool reference (Δ [95 % CI])",
         "protocol"],
        rows,
    ) + below_reference_block(part)  # fmt: skip


def _flag(row: pd.Series) -> bool:
    value = row.get("below_reference")
    return isinstance(value, bool | np.bool_) and bool(value) or str(value) == "True"


def _versus_reference(row: pd.Series) -> str:
    """Δ to the mean-pool reference with its interval; marked when below it by more than noise."""
    if _num(row.get("vs_meanpool_diff")) is None:
        return "–"
    cell = _interval(row, "vs_meanpool_diff")
    if _flag(row):
        cell += ' <span class="failed">below the reference</span>'
    return cell


def below_reference_block(part: pd.DataFrame) -> str:
    """One warning sentence per MIL method below its mean-pool reference by more than noise."""
    if "below_reference" not in part:
        return ""
    flagged = [r for _, r in part.iterrows() if _flag(r)]
    if not flagged:
        return ""
    items = "".join(
        f"<li>{html.esc(r['encoder'])}: {html.esc(r.get('below_reference_note', ''))}</li>"
        for r in flagged
    )
    return (
        "<p class='warn'>Below the mean-pool reference (a linear model on mean-pooled features: "
        "what such a method learnt, a linear model on bag means learns as well or better):</p>"
        f"<ul class='warn'>{items}</ul>"
    )


def comparison_table(part: pd.DataFrame) -> str:
    """Each method against the reference: differences with intervals, p-values and the words."""
    if "diff_cv" not in part or part["diff_cv"].isna().all():
        return ""
    metric = str(part["main_metric"].dropna().iloc[0])
    name = NAMES.get(metric, metric)
    rows = []
    for _, r in part[part["diff_cv"].notna()].iterrows():
        rows.append(
            [
                html.esc(r["encoder"]),
                _method(r),
                html.esc(r["reference"]),
                _interval(r, "diff_cv"),
                html.fmt(_num(r.get("diff_cv_p"))),
                _interval(r, "diff_pooled"),
                html.fmt(_num(r.get("diff_pooled_p")))
                + f" <span class='small'>{html.esc(r.get('diff_pooled_test', ''))}</span>",
                html.esc(r.get("verdict_cv", "")),
                _protocol(r),
            ]
        )
    return (
        f"<h4>Comparisons with the reference ({name}, method − reference)</h4>"
        + html.table(
            [
                "encoder",
                "method",
                "reference",
                "Δ over folds [95 % CI]",
                "p (corrected t)",
                "Δ pooled [95 % CI]",
                "p (paired)",
                "in words",
                "protocol",
            ],
            rows,
        )  # fmt: skip
        + "<p class='small'>Over folds: Nadeau–Bengio corrected resampled t-test over the repeats × "
        "folds (accounts for the overlap of the training sets). Pooled: the out-of-fold predictions "
        "of the first repeat, paired DeLong test for a binary AUC, else the paired bootstrap by case."
        "</p>"
    )


def split_cohorts(models: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cross-validation rows, external-cohort rows) of summary.csv; the external rows are those of
    the fold models (cohort ``external``) and of the all-cases model (``external_all_cases``)."""
    if "cohort" not in models:
        return models, models.iloc[0:0]
    external = models["cohort"].astype(str).str.startswith("external")
    return models[~external].reset_index(drop=True), models[external].reset_index(drop=True)


EXTERNAL_PARTS = {
    "external": (
        "External cohort",
        "Every fold model predicts the external cohort; mean and interval over the fold models, "
        "pooled = their ensemble (mean score). Comparisons: paired test on the ensembles.",
    ),
    "external_all_cases": (
        "External cohort: one model trained on all cases",
        "One model per method trained on every case for the median best epoch of its CV folds (no "
        "selection) predicts the external cohort; interval: DeLong (AUC) or case bootstrap. "
        "Comparisons: paired test on these models' predictions.",
    ),
}


def section_html(part: pd.DataFrame, external: pd.DataFrame | None = None) -> str:
    """The HTML blocks of one task (empty when summary.csv has no statistics columns); the
    external cohort's rows, when there are any, in their own parts below."""
    out = intervals_table(part) + comparison_table(part)
    if external is None or external.empty:
        return out
    cohorts = external["cohort"].astype(str) if "cohort" in external else pd.Series(dtype=str)
    for cohort, (title, text) in EXTERNAL_PARTS.items():
        rows = external[cohorts == cohort].reset_index(drop=True)
        if not rows.empty:
            out += (
                f"<h4>{title}</h4><p class='small'>{text}</p>"
                + intervals_table(rows)
                + comparison_table_external(rows)
            )
    return out


def comparison_table_external(part: pd.DataFrame) -> str:
    """External rows against the reference: the paired pooled test only."""
    if "diff_pooled" not in part or part["diff_pooled"].isna().all():
        return ""
    rows = [
        [
            html.esc(r["encoder"]),
            _method(r),
            html.esc(r["reference"]),
            _interval(r, "diff_pooled"),
            html.fmt(_num(r.get("diff_pooled_p")))
            + f" <span class='small'>{html.esc(r.get('diff_pooled_test', ''))}</span>",
            html.esc(r.get("verdict_pooled", "")),
            _protocol(r),
        ]
        for _, r in part[part["diff_pooled"].notna()].iterrows()
    ]
    return html.table(
        ["encoder", "method", "reference", "Δ ensemble [95 % CI]", "p (paired)", "in words",
         "protocol"],
        rows,
    )  # fmt: skip
