"""Bootstrap by case: intervals for any metric of pooled predictions, and the paired difference of two.

The unit of resampling is the *case* (patient), not the row: a case with several slides enters or
leaves a replicate with all of them, because slides of one patient are not independent evidence. Each
replicate draws as many cases as there are, with replacement; a row is repeated as often as its case
was drawn.

Interval: the percentile interval of the replicates (the 2.5th and 97.5th percentiles for 95 %). BCa
(``scipy.stats.bootstrap``) is not used: it resamples rows rather than cases, is undefined when every
replicate is equal (two identical methods) and does not tolerate the NaN replicates a C-index gives
when a resample holds no comparable pair. Such replicates are dropped and counted (``n_valid``).

Paired difference (``other - ref``): both methods are scored on the *same* replicate, so what they share
cancels. Its two-sided p-value is the percentile interval inverted: ``p = min(1, 2·min(P*(d <= 0),
P*(d >= 0)))`` with the +1 correction of Davison & Hinkley, so ``p < 0.05`` exactly when 0 lies outside
the 95 % percentile interval (up to that correction), and two identical methods get ``p = 1``.

Speed: a metric with a ``weighted`` form (counts per row -> values per replicate, see
:mod:`pipeline.stats.metrics`) is computed for all replicates at once; other metrics loop over replicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

N_BOOT = 2000
CHUNK = 256


def case_counts(case_ids: Sequence, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n_rows)`` integer counts: how often each row's case was drawn in each replicate."""
    codes, uniques = pd.factorize(pd.Series(list(case_ids), dtype=object))
    if (codes < 0).any():
        raise PipelineError("bootstrap", "a case id is missing (NaN) in the predictions")
    n_cases = len(uniques)
    if n_cases < 2:
        raise PipelineError("bootstrap", f"{n_cases} case(s): a bootstrap needs at least 2")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_cases, size=(n_boot, n_cases))
    flat = (draws + n_cases * np.arange(n_boot)[:, None]).ravel()
    per_case = np.bincount(flat, minlength=n_boot * n_cases).reshape(n_boot, n_cases)
    return per_case[:, codes]


def _replicates(metric: Callable, arrays: Sequence[np.ndarray], counts: np.ndarray) -> np.ndarray:
    weighted = getattr(metric, "weighted", None)
    if weighted is not None:  # in blocks of replicates, so memory stays ~ CHUNK × rows
        blocks = [weighted(counts[i : i + CHUNK], *arrays) for i in range(0, len(counts), CHUNK)]
        return np.concatenate(blocks).astype(float)
    rows = np.arange(counts.shape[1])
    out = np.empty(counts.shape[0])
    for b, c in enumerate(counts):
        idx = np.repeat(rows, c)
        out[b] = metric(*(a[idx] for a in arrays))
    return out


def _as_arrays(arrays: Sequence, n_rows: int) -> list[np.ndarray]:
    out = [np.asarray(a) for a in arrays]
    for a in out:
        if len(a) != n_rows:
            raise PipelineError("bootstrap", f"an input has {len(a)} rows for {n_rows} case ids")
    return out


def _percentile(values: np.ndarray, level: float) -> tuple[float, float, int]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    low, high = np.quantile(finite, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high), int(finite.size)


def bootstrap_ci(
    metric: Callable[..., float],
    arrays: Sequence,
    case_ids: Sequence,
    *,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Point estimate ``metric(*arrays)`` and its case-bootstrap percentile interval."""
    arrays = _as_arrays(arrays, len(case_ids))
    estimate = float(metric(*arrays))
    counts = case_counts(case_ids, n_boot, seed)
    reps = _replicates(metric, arrays, counts)
    low, high, n_valid = _percentile(reps, level)
    return {
        "estimate": estimate,
        "se": float(np.nanstd(reps, ddof=1)) if n_valid > 1 else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "level": level,
        "method": "bootstrap-case-percentile",
        "n_boot": n_boot,
        "n_valid": n_valid,
        "n_cases": int(pd.Series(list(case_ids)).nunique()),
        "seed": seed,
    }


def paired_bootstrap(
    metric: Callable[..., float],
    arrays_ref: Sequence,
    arrays_other: Sequence,
    case_ids: Sequence,
    *,
    n_boot: int = N_BOOT,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """``metric(other) - metric(ref)`` on the same rows: percentile interval and two-sided p.

    Row ``i`` of every array must be the same slide/case for both methods (align before calling).
    """
    ref = _as_arrays(arrays_ref, len(case_ids))
    other = _as_arrays(arrays_other, len(case_ids))
    m_ref, m_other = float(metric(*ref)), float(metric(*other))
    counts = case_counts(case_ids, n_boot, seed)
    diffs = _replicates(metric, other, counts) - _replicates(metric, ref, counts)
    low, high, n_valid = _percentile(diffs, level)
    finite = diffs[np.isfinite(diffs)]
    if n_valid:
        below = (np.sum(finite <= 0) + 1) / (n_valid + 1)
        above = (np.sum(finite >= 0) + 1) / (n_valid + 1)
        p = float(min(1.0, 2 * min(below, above)))
    else:
        p = float("nan")
    return {
        "estimate": m_other - m_ref,
        "se": float(finite.std(ddof=1)) if n_valid > 1 else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "level": level,
        "p_value": p,
        "test": "bootstrap-case-paired",
        "reference": m_ref,
        "other": m_other,
        "n_boot": n_boot,
        "n_valid": n_valid,
        "n_cases": int(pd.Series(list(case_ids)).nunique()),
        "seed": seed,
    }
