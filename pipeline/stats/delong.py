"""DeLong's variance of the ROC AUC and the paired test of two AUCs on the same cases.

DeLong, DeLong & Clarke-Pearson (1988) write the empirical AUC as the mean of per-case *placement
values* (structural components): for a positive case, the share of negatives it outscores; for a
negative case, the share of positives that outscore it (ties count one half). The AUC's variance is
``var(positive placements) / m + var(negative placements) / n`` (m positives, n negatives), and two AUCs
computed on the same cases have a covariance built the same way, which is what makes the paired test
possible. Sun & Xu (2014) showed that all placement values follow from three rankings (positives
alone, negatives alone, all cases together, ties as midranks), so the cost is that of a sort,
O(N log N), instead of comparing every positive with every negative.

Interval for one AUC: a normal interval on the logit scale, mapped back, ``expit(logit(A) ± z·SE/(A(1-A)))``.
It stays inside (0, 1) without clipping and is less anti-conservative than ``A ± z·SE`` for the high
AUCs MIL methods reach (the tests check ~95 % coverage by simulation). When ``A`` is 0 or 1 the DeLong
variance is 0 and the interval collapses onto the point; the record's ``note`` says so.

The paired test compares ``AUC_other - AUC_ref`` with its DeLong SE (z-test, two-sided p); its interval
is on the difference scale. Both assume independent cases: one score per case. When a case has several
rows (slides), use the case bootstrap instead (:mod:`pipeline.stats.compare` does so).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from pipeline.errors import PipelineError


def _check(y, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise PipelineError("DeLong", "labels must be 0/1 (1 = positive class)")
        y = y.astype(bool)
    scores = np.asarray(scores, dtype=float)
    if scores.shape[-1] != y.shape[0] or y.ndim != 1:
        raise PipelineError("DeLong", f"{scores.shape[-1]} scores for {y.shape[0]} labels")
    if not np.isfinite(scores).all():
        raise PipelineError("DeLong", "scores contain NaN or infinity")
    if y.all() or not y.any():
        raise PipelineError("DeLong", "the AUC needs both classes; only one is present")
    return y, scores


def placements(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUC and the placement values of positives (``v10``) and negatives (``v01``), Sun & Xu's way.

    ``scores`` is ``(..., N)``: several score vectors on the same labels are ranked in one call.
    Returns ``auc (...)``, ``v10 (..., m)``, ``v01 (..., n)``.
    """
    y, scores = _check(y, scores)
    pos, neg = scores[..., y], scores[..., ~y]
    m, n = pos.shape[-1], neg.shape[-1]
    rank_all = stats.rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)  # midranks
    rank_pos = stats.rankdata(pos, axis=-1)
    rank_neg = stats.rankdata(neg, axis=-1)
    # a positive's rank among all minus its rank among positives = negatives below it (ties: 1/2)
    v10 = (rank_all[..., :m] - rank_pos) / n
    # a negative's rank among all minus its rank among negatives = positives below it
    v01 = 1.0 - (rank_all[..., m:] - rank_neg) / m
    auc = v10.mean(axis=-1)
    return auc, v10, v01


def auc_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs ``(k,)`` and DeLong's covariance matrix ``(k, k)`` of ``k`` score vectors ``(k, N)``."""
    auc, v10, v01 = placements(y, np.atleast_2d(scores))
    m, n = v10.shape[-1], v01.shape[-1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(auc), len(auc)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(auc), len(auc)))
    return auc, s10 / m + s01 / n


def auc_variance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUC and its DeLong variance for each score vector in ``scores (..., N)`` (vectorised)."""
    auc, v10, v01 = placements(y, scores)
    m, n = v10.shape[-1], v01.shape[-1]
    var10 = v10.var(axis=-1, ddof=1) if m > 1 else np.zeros_like(auc)
    var01 = v01.var(axis=-1, ddof=1) if n > 1 else np.zeros_like(auc)
    return auc, var10 / m + var01 / n


def logit_interval(auc, se, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``expit(logit(A) ± z·SE/(A(1-A)))``; collapses onto ``A`` when ``A`` is 0 or 1 (vectorised)."""
    auc, se = np.asarray(auc, dtype=float), np.asarray(se, dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    inner = (auc > 0) & (auc < 1)
    safe = np.where(inner, auc, 0.5)
    half = z * se / (safe * (1 - safe))
    low = np.where(inner, special.expit(special.logit(safe) - half), auc)
    high = np.where(inner, special.expit(special.logit(safe) + half), auc)
    return low, high


def delong_ci(y, score, level: float = 0.95) -> dict:
    """One AUC with its DeLong SE and logit-scale interval (module docstring)."""
    y, score = _check(y, score)
    if score.ndim != 1:
        raise PipelineError("DeLong", "delong_ci takes one score vector; use auc_variance for many")
    auc, var = auc_variance(y, score)
    se = float(np.sqrt(var))
    low, high = logit_interval(auc, se, level)
    out = {
        "estimate": float(auc),
        "se": se,
        "ci_low": float(low),
        "ci_high": float(high),
        "level": level,
        "method": "delong-logit",
        "n_pos": int(y.sum()),
        "n_neg": int((~y).sum()),
    }
    if auc in (0.0, 1.0):
        out["note"] = "perfect separation: DeLong variance is 0, the interval is the point"
    return out


def paired_difference(y, score_ref, score_other) -> tuple[np.ndarray, np.ndarray]:
    """``AUC_other - AUC_ref`` and its DeLong variance for score arrays ``(..., N)`` (vectorised).

    The variance of a difference of two AUCs on the same cases is that of the differences of their
    placement values: ``var(v10_o - v10_r)/m + var(v01_o - v01_r)/n``, which equals
    ``var_r + var_o - 2 cov``.
    """
    auc_r, v10_r, v01_r = placements(y, score_ref)
    auc_o, v10_o, v01_o = placements(y, score_other)
    m, n = v10_r.shape[-1], v01_r.shape[-1]
    var10 = (v10_o - v10_r).var(axis=-1, ddof=1) / m if m > 1 else 0.0
    var01 = (v01_o - v01_r).var(axis=-1, ddof=1) / n if n > 1 else 0.0
    return auc_o - auc_r, var10 + var01


def delong_paired(y, score_ref, score_other, level: float = 0.95) -> dict:
    """``AUC_other - AUC_ref`` on the same cases: DeLong SE, normal interval and two-sided z-test p."""
    y, score_ref = _check(y, score_ref)
    _, score_other = _check(y, score_other)
    if score_ref.shape != score_other.shape or score_ref.ndim != 1:
        raise PipelineError("DeLong", "the paired test takes two score vectors of the same cases")
    auc_ref, _ = auc_variance(y, score_ref)
    diff, var = paired_difference(y, score_ref, score_other)
    diff = float(diff)
    se = float(np.sqrt(max(float(var), 0.0)))
    z_crit = stats.norm.ppf(0.5 + level / 2)
    if se > 0:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    else:  # identical rankings, or both perfect: no evidence of a difference
        z, p = (0.0, 1.0) if diff == 0 else (float("nan"), float("nan"))
    return {
        "estimate": diff,
        "se": se,
        "ci_low": diff - z_crit * se,
        "ci_high": diff + z_crit * se,
        "level": level,
        "statistic": z,
        "p_value": p,
        "test": "delong-paired",
        "reference": float(auc_ref),
        "other": float(auc_ref) + diff,
        "n_pos": int(y.sum()),
        "n_neg": int((~y).sum()),
    }
