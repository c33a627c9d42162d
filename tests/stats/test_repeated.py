"""Repeated-CV interval and the Nadeau–Bengio corrected t-test against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.errors import PipelineError
from pipeline.stats import repeated as R

DIFFS = [[0.02, 0.04, -0.01], [0.03, 0.00, 0.01]]  # 2 repeats × 3 folds, other - ref


def test_corrected_ttest_equals_hand_computation():
    # J = 6, mean = 0.09 / 6 = 0.015
    # deviations 0.005, 0.025, -0.025, 0.015, -0.015, -0.005 -> squares sum 17.5e-4 -> s² = 3.5e-4
    # correction 1/6 + 20/80 = 5/12 -> var = 3.5e-4 * 5/12 = 1.4583333e-4 -> se = 0.012076147
    # t = 0.015 / 0.012076147 = 1.2421180, df = 5
    res = R.corrected_resampled_ttest(DIFFS, n_train=80, n_test=20)
    assert res["estimate"] == pytest.approx(0.015)
    assert res["correction"] == pytest.approx(5 / 12)
    assert res["se"] == pytest.approx(0.012076147, rel=1e-7)
    assert res["statistic"] == pytest.approx(1.2421180, rel=1e-6)
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(1.2421180, 5), rel=1e-6)
    assert 0.26 < res["p_value"] < 0.28  # t table, 5 df: t = 1.242 sits near p = 0.27
    half = 2.5705818 * 0.012076147  # t_{5, 0.975}
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.015 - half, 0.015 + half), rel=1e-6)
    assert res["n_differences"] == 6 and res["test"] == "nadeau-bengio"
    # the naive paired t-test (no correction) would be far more confident
    naive = 0.015 / math.sqrt(3.5e-4 / 6)
    assert naive == pytest.approx(1.9639610, rel=1e-6) and res["statistic"] < naive


def test_corrected_ttest_degenerate_cases():
    same = R.corrected_resampled_ttest(np.zeros((3, 5)), 80, 20)
    assert (same["estimate"], same["p_value"], same["ci_low"], same["ci_high"]) == (0, 1, 0, 0)
    one = R.corrected_resampled_ttest([[0.1]], 80, 20)
    assert math.isnan(one["p_value"])
    with pytest.raises(PipelineError, match="must be > 0"):
        R.corrected_resampled_ttest(DIFFS, 0, 20)


def test_interval_over_repeats_means():
    values = [[0.80, 0.90, 0.70], [0.85, 0.75, 0.80], [0.90, 0.80, np.nan]]
    # repeat means 0.80, 0.80, 0.85 -> mean 0.81667, sd 0.0288675, t_{2,0.975} = 4.3026527
    res = R.repeated_cv_interval(values)
    half = 4.3026527 * 0.0288675 / math.sqrt(3)
    assert res["interval_over"] == "repeats" and res["n_interval"] == 3
    assert (res["ci_low"], res["ci_high"]) == pytest.approx(
        (0.816667 - half, 0.816667 + half), rel=1e-5
    )
    assert res["mean"] == pytest.approx(6.5 / 8)  # over the 8 finite folds
    assert (res["n_repeats"], res["n_folds"], res["n_values"]) == (3, 3, 8)


def test_one_repeat_falls_back_to_folds_and_says_so():
    res = R.repeated_cv_interval([[0.80, 0.90, 0.70, 0.60]])
    # mean 0.75, sd 0.1290994, t_{3,0.975} = 3.1824463
    half = 3.1824463 * 0.1290994 / 2
    assert res["interval_over"] == "folds" and res["n_interval"] == 4
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.75 - half, 0.75 + half), rel=1e-6)
    assert res["std"] == pytest.approx(np.std([0.8, 0.9, 0.7, 0.6]))


def test_in_words():
    res = R.corrected_resampled_ttest(DIFFS, 80, 20)
    text = R.in_words(res, "AUC")
    assert text.startswith("+0.015 AUC (95 % CI -0.016 to +0.046, p = 0.27)")
    assert text.endswith("not distinguishable from noise at 5 %")
    clear = {"estimate": 0.05, "ci_low": 0.02, "ci_high": 0.08, "p_value": 0.001, "level": 0.95}
    assert R.in_words(clear).endswith(": distinguishable from noise at 5 %")
    assert R.in_words({"estimate": 0.1, "p_value": float("nan")}) == "not enough data to compare"


def test_intervals_are_cut_to_the_metric_range_and_say_so():
    values = [[1.0, 1.0, 0.9], [0.7, 0.8, 0.6]]
    # repeat means 0.96667, 0.7 -> mean 0.83333, sd 0.188562, t_{1,0.975} = 12.7062047
    half = 12.7062047 * 0.188562 / math.sqrt(2)
    free = R.repeated_cv_interval(values)
    assert (free["ci_low"], free["ci_high"]) == pytest.approx(
        (0.83333 - half, 0.83333 + half), rel=1e-4
    )
    assert free["ci_low"] < 0 and free["ci_high"] > 1 and not free["clipped"]
    cut = R.repeated_cv_interval(values, bounds=(0.0, 1.0))
    assert (cut["ci_low"], cut["ci_high"], cut["clipped"]) == (0.0, 1.0, True)
    inside = R.repeated_cv_interval([[0.80, 0.90, 0.70], [0.85, 0.80, 0.80]], bounds=(0.0, 1.0))
    assert not inside["clipped"] and 0 < inside["ci_low"] < inside["ci_high"] < 1
    wide = R.corrected_resampled_ttest([[-0.9, 0.9, -0.8]], 10, 5, bounds=(-1.0, 1.0))
    free_t = R.corrected_resampled_ttest([[-0.9, 0.9, -0.8]], 10, 5)
    assert (wide["ci_low"], wide["ci_high"]) == (-1.0, 1.0) and wide["clipped"]
    assert free_t["ci_low"] < -1 and wide["p_value"] == free_t["p_value"]
