"""Repeated cross-validation: R seeded fold assignments, each a complete split by case."""

from __future__ import annotations

import pandas as pd

from pipeline.cli import main
from pipeline.layout import Layout, fold_repeat, repeat_ids
from pipeline.mil.splits import make_splits, repeat_seed

from .conftest import planted_bags


def _strata() -> pd.Series:
    _, labels = planted_bags(n_bags=40, dim=4)
    return labels.groupby("case_id")["label"].max()


def test_repeats_differ_but_each_is_a_split_by_case():
    strata = _strata()
    splits = [make_splits(strata, 4, repeat_seed(7, r), 0.2) for r in range(3)]
    assert splits[0].equals(make_splits(strata, 4, 7, 0.2))  # repeat 0 is the single-repeat split
    tests = [s[s.role == "test"].set_index("case_id")["fold"].sort_index() for s in splits]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not tests[a].equals(tests[b])  # different fold assignments
    for s, test in zip(splits, tests, strict=True):
        assert sorted(test.index) == sorted(strata.index)  # every case tested once per repeat
        assert s.groupby(["case_id", "fold"]).size().eq(1).all()  # one role per case and fold
        assert s.groupby("fold")["case_id"].nunique().eq(len(strata)).all()


def test_splits_command_repeat_flag_and_layout(tmp_path):
    _, labels = planted_bags(n_bags=24, dim=4)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    for r in (None, 0, 1):
        flag = [] if r is None else ["--repeat", str(r)]
        out = tmp_path / f"s{r}.csv"
        assert (
            main(["splits", str(tmp_path / "labels.csv"), "-o", str(out), "--seed", "3", *flag])
            == 0
        )
    s_none, s0, s1 = (pd.read_csv(tmp_path / f"s{r}.csv") for r in (None, 0, 1))
    assert s_none.equals(s0) and not s0.equals(s1)
    # one repeat keeps today's paths; several get a repeat folder
    lay = Layout("res")
    assert repeat_ids(1) == [None] and repeat_ids(3) == [0, 1, 2]
    assert lay.splits("t") == "res/splits/t.csv"
    assert lay.splits("t", 1) == "res/splits/t/repeat1.csv"
    assert lay.fold_dir("t", "e", "m", 2) == "res/mil/t/e/m/fold2"
    assert lay.fold_dir("t", "e", "m", 2, 1) == "res/mil/t/e/m/repeat1/fold2"
    assert fold_repeat(lay.fold_dir("t", "e", "m", 2, 1)) == 1
    assert fold_repeat(lay.fold_dir("t", "e", "m", 2)) == 0
