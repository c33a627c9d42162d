"""Statistics over repeated cross-validation: the mean with its interval, and the corrected paired t-test.

Fold values come as an ``(R, K)`` array: ``R`` repeats (different seeded fold assignments) of ``K``
folds; NaN marks a fold whose metric is undefined and is left out.

Interval of the mean: each repeat's mean over its folds is one estimate of the cross-validated
performance; the interval is the t-interval over those ``R`` means (``t_{R-1}``). It says how much the
CV estimate moves with the fold assignment. It does not include the variation from drawing another
cohort, and folds share most of their training cases, so it is narrower than an interval for
performance on new patients. With one repeat there is only one such mean; the record then falls back
to the t-interval over the ``K`` folds and says so (``interval_over = "folds"``): that interval ignores
the overlap of the training sets and is optimistic.

Bounded metrics: AUC, accuracy, F1 and the C-index lie in [0, 1] and their differences in [-1, 1]; with
few repeats (``t_1`` = 12.7 for two) the t-interval can pass those limits, so callers give ``bounds`` and
the interval is cut to them (``clipped`` says so). Cutting keeps the coverage: the true value is inside
the bounds.

Paired comparison: Nadeau & Bengio (2003) correct the t-test on the ``J = R·K`` paired fold differences
for that overlap by inflating the variance: ``var = (1/J + n_test/n_train) · s²`` (``s²`` the sample
variance of the differences) — Bouckaert & Frank's (2004) "corrected repeated k-fold cv test". Then
``t = mean / sqrt(var)`` with ``J - 1`` degrees of freedom, a two-sided p-value and the matching interval.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from pipeline.errors import PipelineError


def _grid(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise PipelineError(what, f"expected an (repeats, folds) array, got shape {arr.shape}")
    return arr


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and t-interval of a 1-D sample (NaN bounds when fewer than 2 values)."""
    mean = float(x.mean()) if x.size else float("nan")
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return mean, float(mean - half), float(mean + half)


def _clip(low: float, high: float, bounds: tuple[float, float] | None) -> tuple[float, float, bool]:
    """``(low, high)`` cut to ``bounds``, and whether anything was cut (NaN bounds stay NaN)."""
    if bounds is None or not (np.isfinite(low) and np.isfinite(high)):
        return low, high, False
    lo, hi = max(low, bounds[0]), min(high, bounds[1])
    return float(lo), float(hi), bool(lo != low or hi != high)


def repeated_cv_interval(
    values, level: float = 0.95, bounds: tuple[float, float] | None = None
) -> dict:
    """Mean over folds × repeats and its t-interval over the repeats' means (module docstring),
    cut to ``bounds`` (the metric's range) when given."""
    grid = _grid(values, "repeated CV")
    finite = np.isfinite(grid)
    repeat_means = np.array(
        [grid[r][finite[r]].mean() for r in range(grid.shape[0]) if finite[r].any()]
    )
    pooled = grid[finite]
    if repeat_means.size >= 2:
        _, low, high = _t_interval(repeat_means, level)
        over, n_over = "repeats", repeat_means.size
    else:
        _, low, high = _t_interval(pooled, level)
        over, n_over = "folds", pooled.size
    low, high, clipped = _clip(low, high, bounds)
    return {
        "mean": float(pooled.mean()) if pooled.size else float("nan"),
        "std": float(pooled.std()) if pooled.size else float("nan"),  # ddof 0, as the summary
        "ci_low": low,
        "ci_high": high,
        "clipped": clipped,
        "level": level,
        "interval_over": over,
        "n_interval": int(n_over),
        "n_repeats": int(grid.shape[0]),
        "n_folds": int(grid.shape[1]),
        "n_values": int(pooled.size),
    }


def corrected_resampled_ttest(
    diffs,
    n_train: float,
    n_test: float,
    level: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict:
    """Nadeau–Bengio corrected t-test on ``(R, K)`` paired fold differences (``other - ref``); the
    interval cut to ``bounds`` (the difference's range) when given, the p-value unchanged."""
    grid = _grid(diffs, "corrected t-test")
    d = grid[np.isfinite(grid)]
    if not (n_train > 0 and n_test > 0):
        raise PipelineError("corrected t-test", f"n_train={n_train}, n_test={n_test} must be > 0")
    j = d.size
    ratio = float(n_test) / float(n_train)
    mean = float(d.mean()) if j else float("nan")
    out = {
        "estimate": mean,
        "level": level,
        "test": "nadeau-bengio",
        "n_differences": int(j),
        "correction": 1 / j + ratio if j else float("nan"),
        "n_train": float(n_train),
        "n_test": float(n_test),
    }
    if j < 2:
        nan = float("nan")
        return {**out, "se": nan, "ci_low": nan, "ci_high": nan, "statistic": nan, "p_value": nan}
    var = (1 / j + ratio) * d.var(ddof=1)
    se = float(np.sqrt(var))
    half = stats.t.ppf(0.5 + level / 2, j - 1) * se
    if se > 0:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), j - 1))
    else:  # every difference equal: zero means no difference, anything else is certain
        t, p = (0.0, 1.0) if mean == 0 else (float(np.sign(mean) * np.inf), 0.0)
    low, high, clipped = _clip(mean - half, mean + half, bounds)
    return {
        **out,
        "se": se,
        "ci_low": low,
        "ci_high": high,
        "clipped": clipped,
        "statistic": t,
        "p_value": p,
    }


def in_words(comparison: dict, metric: str = "", alpha: float = 0.05) -> str:
    """A comparison record as one sentence for the report: the difference, its interval, p and the verdict."""
    p, est = comparison.get("p_value"), comparison.get("estimate")
    level = comparison.get("level", 0.95)
    if p is None or est is None or not np.isfinite(p) or not np.isfinite(est):
        return "not enough data to compare"
    name = f" {metric}" if metric else ""
    at = f"{alpha * 100:g} %"
    verdict = (
        f"distinguishable from noise at {at}"
        if p < alpha
        else f"not distinguishable from noise at {at}"
    )
    return (
        f"{est:+.3f}{name} ({level * 100:g} % CI {comparison['ci_low']:+.3f} to "
        f"{comparison['ci_high']:+.3f}, p = {p:.2g}): {verdict}"
    )
