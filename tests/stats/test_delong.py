"""DeLong against a brute-force structural-components computation, and interval coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipeline.errors import PipelineError
from pipeline.stats import delong as D


def _psi(x, y):
    """Kernel of the Mann-Whitney AUC: 1 if the positive scores higher, 1/2 on a tie."""
    return (x > y) + 0.5 * (x == y)


def brute_force(y, scores):
    """DeLong 1988 written directly: O(m·n) placement values, then their (co)variances."""
    y = np.asarray(y, bool)
    k = len(scores)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        pos, neg = s[y], s[~y]
        table = np.array([[_psi(p, q) for q in neg] for p in pos])  # m × n
        aucs.append(table.mean())
        v10s.append(table.mean(axis=1))  # per positive
        v01s.append(table.mean(axis=0))  # per negative
    m, n = int(y.sum()), int((~y).sum())
    cov = np.empty((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((v10s[a] - aucs[a]) * (v10s[b] - aucs[b])) / (m - 1)
            s01 = np.sum((v01s[a] - aucs[a]) * (v01s[b] - aucs[b])) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return np.array(aucs), cov


@pytest.fixture
def tied_scores():
    rng = np.random.default_rng(7)
    y = rng.random(60) < 0.4
    a = np.round(rng.normal(size=60) + 0.8 * y, 1)  # rounded: many ties, within and across classes
    b = np.round(0.6 * a + rng.normal(size=60) + 0.3 * y, 1)
    return y.astype(int), a, b


def test_auc_and_variance_equal_brute_force(tied_scores):
    y, a, b = tied_scores
    aucs, cov = brute_force(y, [a, b])
    got_auc, got_var = D.auc_variance(y, np.stack([a, b]))
    np.testing.assert_allclose(got_auc, aucs, rtol=1e-12)
    np.testing.assert_allclose(got_auc[0], roc_auc_score(y, a), rtol=1e-12)
    np.testing.assert_allclose(got_var, np.diag(cov), rtol=1e-10)
    got_auc2, got_cov = D.auc_covariance(y, np.stack([a, b]))
    np.testing.assert_allclose(got_cov, cov, rtol=1e-10)


def test_paired_test_equals_brute_force(tied_scores):
    y, a, b = tied_scores
    aucs, cov = brute_force(y, [a, b])
    se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z = (aucs[1] - aucs[0]) / se
    res = D.delong_paired(y, a, b)
    assert res["estimate"] == pytest.approx(aucs[1] - aucs[0], rel=1e-12)
    assert res["se"] == pytest.approx(se, rel=1e-10)
    assert res["statistic"] == pytest.approx(z, rel=1e-10)
    assert res["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert res["ci_low"] == pytest.approx(aucs[1] - aucs[0] - 1.959964 * se, rel=1e-6)
    assert (res["reference"], res["other"]) == pytest.approx(tuple(aucs))
    assert 0 < res["p_value"] < 1


def test_paired_identical_scores_is_no_difference(tied_scores):
    y, a, _ = tied_scores
    res = D.delong_paired(y, a, a.copy())
    assert (res["estimate"], res["se"], res["p_value"]) == (0.0, 0.0, 1.0)


def test_ci_is_logit_interval_around_the_auc(tied_scores):
    y, a, _ = tied_scores
    res = D.delong_ci(y, a)
    aucs, cov = brute_force(y, [a])
    auc, se = aucs[0], np.sqrt(cov[0, 0])
    half = 1.959964 * se / (auc * (1 - auc))
    logit = np.log(auc / (1 - auc))
    assert res["ci_low"] == pytest.approx(1 / (1 + np.exp(-(logit - half))), rel=1e-6)
    assert res["ci_high"] == pytest.approx(1 / (1 + np.exp(-(logit + half))), rel=1e-6)
    assert 0 < res["ci_low"] < res["estimate"] < res["ci_high"] < 1
    assert (res["n_pos"], res["n_neg"]) == (int(y.sum()), int(len(y) - y.sum()))


def test_perfect_separation_collapses_with_a_note():
    res = D.delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (res["estimate"], res["ci_low"], res["ci_high"], res["se"]) == (1.0, 1.0, 1.0, 0.0)
    assert "perfect separation" in res["note"]


@pytest.mark.parametrize(
    "y, s, what",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1, 1], [0.1, 0.2], "2 scores for 3 labels"),
    ],
)
def test_bad_input_is_one_clear_error(y, s, what):
    with pytest.raises(PipelineError, match=what):
        D.delong_ci(y, s)


@pytest.mark.parametrize("d, n_pos, n_neg", [(1.5, 40, 60), (2.5, 50, 50)])
def test_interval_covers_the_true_binormal_auc(d, n_pos, n_neg):
    """Binormal scores (positives N(d, 1), negatives N(0, 1)) have AUC = Φ(d/√2); 2000 seeded draws."""
    true = stats.norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(2014)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    scores = rng.standard_normal((2000, n_pos + n_neg))
    scores[:, :n_pos] += d
    auc, var = D.auc_variance(y, scores)  # all 2000 simulations in one call
    low, high = D.logit_interval(auc, np.sqrt(var))
    coverage = np.mean((low <= true) & (true <= high))
    assert 0.93 <= coverage <= 0.97
    assert abs(auc.mean() - true) < 0.005  # the estimator itself is unbiased


def test_paired_test_holds_its_level_under_the_null():
    """Two different but equally good correlated scores: p < 0.05 in about 5 % of 2000 draws."""
    rng = np.random.default_rng(1988)
    n_pos, n_neg, d = 40, 60, 1.5
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    shared = rng.standard_normal((2000, n_pos + n_neg))
    a = shared + rng.standard_normal((2000, n_pos + n_neg))
    b = shared + rng.standard_normal((2000, n_pos + n_neg))
    a[:, :n_pos] += d
    b[:, :n_pos] += d
    diff, var = D.paired_difference(y, a, b)
    p = 2 * stats.norm.sf(np.abs(diff) / np.sqrt(var))
    assert 0.035 <= np.mean(p < 0.05) <= 0.065
    first = D.delong_paired(y, a[0], b[0])
    assert first["p_value"] == pytest.approx(p[0])
