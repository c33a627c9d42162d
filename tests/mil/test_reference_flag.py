"""The mean-pool reference in summary.csv and the report: a MIL method is flagged below it exactly when
the 95 % interval of (method - meanpool) over folds lies below zero, whatever ``--reference`` is."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.cli import main
from pipeline.methods import default_reference

FOLDS, CASES = 5, 24  # cases per test fold, half positive


def _scores(method: str, fold: int, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test-fold scores: meanpool separates well; `weak` much worse on every fold (below by more
    than noise); `close` equals meanpool except one fold where it is worse (lower mean, in noise);
    `better` separates perfectly."""
    good = label * 1.5 + rng.normal(size=label.size)
    if method in ("meanpool", "close") and not (method == "close" and fold == 2):
        return good
    if method == "close":
        return label * 0.2 + rng.normal(size=label.size)
    if method == "better":
        return label * 10.0 + rng.normal(size=label.size)
    return label * 0.1 + rng.normal(size=label.size)  # weak


def _write_fold(path, method: str, fold: int) -> None:
    rng = np.random.default_rng(fold)  # the same noise for every method on a fold
    label = np.repeat([0, 1], CASES // 2)
    score = 1 / (1 + np.exp(-_scores(method, fold, label, rng)))
    ids = [f"c{fold}_{i}" for i in range(CASES)]
    pred = pd.DataFrame(
        {
            "slide_id": ids,
            "case_id": ids,
            "label": label.astype(str),
            "prediction": (score > 0.5).astype(int).astype(str),
            "score_0": 1 - score,
            "score_1": score,
            "role": "test",
        }
    )
    path.mkdir(parents=True)
    pred.to_csv(path / "predictions.csv", index=False)
    metrics = {
        "fold": fold,
        "seed": 0,
        "method": method,
        "task_type": "classification",
        "test": {"auc": float(roc_auc_score(label, score))},
        "n_bags": {"train": 80, "val": 16, "test": CASES},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    """summary.csv of `wsi-mil evaluate` + `wsi-mil summary` over planted fold folders."""
    results = tmp_path_factory.mktemp("flag") / "results"
    methods = ["meanpool", "abmil", "weak", "close", "better"]
    paths = []
    for method in methods:
        base = results / "mil" / "t" / "e" / method
        for k in range(FOLDS):
            _write_fold(base / f"fold{k}", method, k)
        dirs = [str(base / f"fold{k}") for k in range(FOLDS)]
        assert main(["evaluate", *dirs, "-o", str(base / "summary.json")]) == 0
        paths.append(str(base / "summary.json"))
    out = results / "summary.csv"
    assert main(["summary", *paths, "-o", str(out), "--reference", "abmil", "--n-boot", "200"]) == 0
    return pd.read_csv(out).set_index("method")


def test_default_reference_is_a_mil_method_not_the_mean_pool_baseline():
    assert default_reference(["meanpool", "maxpool", "abmil", "mhim_abmil"]) == "abmil"
    assert default_reference(["maxpool", "meanpool"]) == "maxpool"  # nothing else to compare with
    assert default_reference(["mhim_abmil"]) == "abmil"


def _fold_aucs(method: str) -> np.ndarray:
    """Each planted test fold's AUC, recomputed from the scores the fold folders were written with."""
    aucs = []
    for fold in range(FOLDS):
        rng = np.random.default_rng(fold)
        label = np.repeat([0, 1], CASES // 2)
        aucs.append(roc_auc_score(label, _scores(method, fold, label, rng)))
    return np.array(aucs)


def test_flag_appears_exactly_when_the_interval_is_below_zero(summary):
    """Expected values by hand: the Nadeau–Bengio corrected t-interval over the 5 fold differences,
    var = (1/K + n_test/n_train) s², n_train = train + validation bags (96), n_test = 24."""
    from scipy import stats

    assert summary.loc["abmil", "reference"] == "abmil"  # --reference is unchanged by the check
    flags = summary["below_reference"]
    assert pd.isna(flags["meanpool"])  # the reference itself is not checked
    for method in ("abmil", "weak", "close", "better"):
        row = summary.loc[method]
        d = _fold_aucs(method) - _fold_aucs("meanpool")
        se = np.sqrt((1 / FOLDS + CASES / 96) * d.var(ddof=1))
        high = d.mean() + stats.t.ppf(0.975, FOLDS - 1) * se
        assert row["vs_meanpool_diff"] == pytest.approx(d.mean())
        assert row["vs_meanpool_diff_ci_high"] == pytest.approx(min(high, 1.0))
        assert bool(row["below_reference"]) is bool(high < 0), method
    # the planted cases: two far below, one lower on average but within noise, one above
    assert flags["weak"] and flags["abmil"]
    assert summary.loc["close", "vs_meanpool_diff"] < 0 and not flags["close"]
    assert summary.loc["better", "vs_meanpool_diff"] > 0 and not flags["better"]
    note = summary.loc["weak", "below_reference_note"]
    mean = summary.loc["weak", "auc_mean"]
    ref_mean = summary.loc["meanpool", "auc_mean"]
    assert note.startswith(f"weak (AUC {mean:.3f} [") and "by more than noise" in note
    assert f"is below the mean-pool reference meanpool ({ref_mean:.3f} [" in note
    assert (
        "is within noise of the mean-pool reference" in summary.loc["close", "below_reference_note"]
    )
    assert "is above the mean-pool reference" in summary.loc["better", "below_reference_note"]


def test_report_draws_the_reference_and_says_which_methods_are_below(summary):
    from pipeline.report import comparisons

    part = summary.reset_index()
    block = comparisons.section_html(part)
    assert "Below the mean-pool reference" in block
    for method in ("weak", "abmil"):
        assert summary.loc[method, "below_reference_note"].replace("'", "&#x27;") in block
    for method in ("close", "better"):
        assert summary.loc[method, "below_reference_note"] not in block
    assert block.count("below the reference</span>") == 2  # the flag in the intervals table
    results = part["summary"].iloc[0].split("/mil/")[0]
    fig = comparisons.fold_dots(results, part)
    assert fig.png.startswith(b"\x89PNG") and "mean-pool reference" in fig.caption
