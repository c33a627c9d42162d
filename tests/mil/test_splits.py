"""Splits by case: partition, no straddling, stratification, validation carved from training only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.mil.splits import check_splits, fold_roles, make_splits, read_splits
from pipeline.mil.tasks import ClassificationTask, SurvivalTask


def _labels(n_cases=60, seed=0):
    """Cases with 1-3 slides each, imbalanced classes (2:1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        label = "tumour" if c % 3 else "normal"
        for s in range(int(rng.integers(1, 4))):
            rows.append((f"c{c:02d}-s{s}", f"c{c:02d}", label))
    return pd.DataFrame(rows, columns=["slide_id", "case_id", "label"])


def test_folds_partition_cases_and_val_comes_from_training():
    labels = _labels()
    task = ClassificationTask(labels)
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, folds=5, seed=0, val_fraction=0.2, val_strata=val_strata)
    cases = set(labels["case_id"])
    # one row per (case, fold); every case test exactly once; test folds partition the cases
    assert len(splits) == 5 * len(cases)
    tests = [set(splits[(splits.fold == k) & (splits.role == "test")].case_id) for k in range(5)]
    assert set().union(*tests) == cases
    assert sum(len(t) for t in tests) == len(cases)
    for k in range(5):
        roles = fold_roles(splits, k)
        assert set(roles) == cases
        val = {c for c, r in roles.items() if r == "val"}
        train = {c for c, r in roles.items() if r == "train"}
        assert not val & tests[k] and not train & tests[k]  # val carved from the training part only
        n_training = len(cases) - len(tests[k])
        assert len(val) == round(0.2 * n_training)
        # every class in every validation part
        assert set(strata[list(val)]) == {"normal", "tumour"}
    check_splits(splits)


def test_slides_follow_their_case_and_stratification_is_balanced():
    labels = _labels(n_cases=100, seed=3)
    task = ClassificationTask(labels)
    strata, _ = task.case_strata()
    splits = make_splits(strata, folds=5, seed=1, val_fraction=0.15)
    slide_fold = labels.merge(splits[splits.role == "test"], on="case_id")
    # every slide of a case has the case's test fold: one test fold per case over its slides
    assert (slide_fold.groupby("case_id")["fold"].nunique() == 1).all()
    assert len(slide_fold) == len(labels)
    # a case never straddles train and test inside a fold (one role per case per fold)
    assert not splits.duplicated(["case_id", "fold"]).any()
    # class proportions per test fold within one case of the overall proportion
    overall = (strata == "tumour").mean()
    for k in range(5):
        fold_cases = splits[(splits.fold == k) & (splits.role == "test")].case_id
        n = len(fold_cases)
        assert abs((strata[fold_cases] == "tumour").sum() - overall * n) <= 1
        assert 19 <= n <= 21


def test_survival_folds_stratified_by_event_and_time_bin():
    rng = np.random.default_rng(0)
    n = 100
    table = pd.DataFrame(
        {
            "case_id": [f"p{i:03d}" for i in range(n)],
            "time": rng.exponential(30, n).round(1) + 1,
            "event": (rng.random(n) < 0.7).astype(int),
        }
    )
    task = SurvivalTask(table, n_bins=4)
    strata, val_strata = task.case_strata()
    assert strata.nunique() == 8  # event x 4 bins
    splits = make_splits(strata, 5, 0, 0.15, val_strata)
    for k in range(5):
        test = splits[(splits.fold == k) & (splits.role == "test")].case_id
        for stratum, count in strata.value_counts().items():
            assert abs((strata[test] == stratum).sum() - count / 5) <= 1
        val = splits[(splits.fold == k) & (splits.role == "val")].case_id
        assert set(val_strata[val]) == {"event0", "event1"}


def test_splits_are_reproducible_and_seed_dependent():
    strata = ClassificationTask(_labels()).case_strata()[0]
    a = make_splits(strata, 5, 0, 0.15)
    pd.testing.assert_frame_equal(a, make_splits(strata, 5, 0, 0.15))
    assert not a.equals(make_splits(strata, 5, 1, 0.15))


def test_bad_splits_files_fail_with_one_line(tmp_path):
    strata = ClassificationTask(_labels()).case_strata()[0]
    splits = make_splits(strata, 3, 0, 0.15)
    broken = splits.copy()
    broken.loc[broken.index[broken.role != "test"][0], "role"] = "test"  # tested in two folds
    path = tmp_path / "s.csv"
    broken.to_csv(path, index=False)
    with pytest.raises(PipelineError, match="test part of 2 folds"):
        read_splits(path)
    with pytest.raises(PipelineError, match="fold 7 is not in the splits"):
        fold_roles(splits, 7)
    with pytest.raises(PipelineError, match="cannot be split into 5 folds"):
        make_splits(strata.iloc[:3], 5, 0, 0.15)
