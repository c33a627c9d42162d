"""The flat records summary.csv is built from: right test per situation, values a user would check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from pipeline.errors import PipelineError
from pipeline.stats import MethodResults, compare_methods, summarise_method, summary_columns
from pipeline.stats.metrics import auc as project_auc
from pipeline.stats.metrics import concordance_index

N_BOOT = 300


def _classification(seed, n_cases=60, slides_per_case=1, classes=("neg", "pos"), signal=1.5):
    rng = np.random.default_rng(seed)
    k = len(classes)
    case_label = np.arange(n_cases) % k
    label = np.repeat(case_label, slides_per_case)
    logits = rng.normal(size=(len(label), k))
    logits[np.arange(len(label)), label] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(len(label))],
            "case_id": [f"c{i}" for i in np.repeat(np.arange(n_cases), slides_per_case)],
            "role": "test",
            "label": [classes[i] for i in label],
        }
    )
    for j, c in enumerate(classes):
        frame[f"score_{c}"] = probs[:, j]
    frame["prediction"] = [classes[i] for i in probs.argmax(axis=1)]
    return frame


def _folds(seed, metric_names, n_repeats=2, n_folds=3, centre=0.8):
    rng = np.random.default_rng(seed)
    rows = [
        {"repeat": r, "fold": f, "n_train": 40, "n_test": 20}
        | {m: centre + rng.normal(scale=0.03) for m in metric_names}
        for r in range(n_repeats)
        for f in range(n_folds)
    ]
    return pd.DataFrame(rows)


CLS = ("auc", "accuracy", "balanced_accuracy", "f1")


def test_binary_summary_uses_delong_and_pooled_values():
    pred = _classification(0)
    folds = _folds(1, CLS)
    row = summarise_method(folds, pred, "classification", n_boot=N_BOOT)
    y = (pred["label"] == "pos").to_numpy()
    assert row["auc_pooled"] == pytest.approx(roc_auc_score(y, pred["score_pos"]))
    assert row["auc_pooled_ci_method"] == "delong-logit"
    assert row["accuracy_pooled"] == pytest.approx(
        accuracy_score(pred["label"], pred["prediction"])
    )
    assert row["accuracy_pooled_ci_method"] == "bootstrap-case-percentile"
    assert row["auc_mean"] == pytest.approx(folds["auc"].mean())
    assert (row["n_repeats"], row["n_folds"], row["cv_interval_over"]) == (2, 3, "repeats")
    for m in CLS:
        assert row[f"{m}_pooled_ci_low"] <= row[f"{m}_pooled"] <= row[f"{m}_pooled_ci_high"]
        assert row[f"{m}_ci_low"] < row[f"{m}_mean"] < row[f"{m}_ci_high"]
    assert set(row) <= set(summary_columns("classification"))
    assert row["n_cases_pooled"] == 60


def test_several_slides_per_case_or_classes_fall_back_to_the_case_bootstrap():
    multi_slide = _classification(2, slides_per_case=3)
    row = summarise_method(_folds(3, CLS), multi_slide, "classification", n_boot=N_BOOT)
    assert row["auc_pooled_ci_method"] == "bootstrap-case-percentile"
    assert row["n_cases_pooled"] == 60
    three = _classification(4, classes=("a", "b", "c"))
    row = summarise_method(_folds(5, CLS), three, "classification", n_boot=N_BOOT)
    probs = three[["score_a", "score_b", "score_c"]].to_numpy()
    labels = three["label"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    assert row["auc_pooled"] == pytest.approx(project_auc(labels, probs))  # macro one-vs-rest
    assert row["auc_pooled_ci_method"] == "bootstrap-case-percentile"


def test_single_repeat_and_pooled_first_repeat_are_recorded():
    pred = pd.concat([_classification(6).assign(repeat=1), _classification(7).assign(repeat=0)])
    row = summarise_method(
        _folds(8, CLS, n_repeats=1, n_folds=5), pred, "classification", n_boot=N_BOOT
    )
    assert row["cv_interval_over"] == "folds" and row["pooled_repeat"] == 0
    first = pred[pred["repeat"] == 0]
    assert row["auc_pooled"] == pytest.approx(
        roc_auc_score(first["label"] == "pos", first["score_pos"])
    )


def test_identical_methods_compare_as_no_difference():
    pred, folds = _classification(9), _folds(10, CLS)
    ref = MethodResults("abmil", folds, pred)
    res = compare_methods(
        ref, MethodResults("copy", folds.copy(), pred.copy()), "classification", n_boot=N_BOOT
    )
    assert (res["diff_cv"], res["diff_cv_p"], res["diff_pooled"], res["diff_pooled_p"]) == (
        0,
        1,
        0,
        1,
    )
    assert res["diff_pooled_test"] == "delong-paired" and res["diff_cv_test"] == "nadeau-bengio"
    assert res["verdict_cv"].endswith("not distinguishable from noise at 5 %")
    assert set(res) <= set(summary_columns("classification")) and res["reference"] == "abmil"


def _survival(seed, noise, n=80):
    rng = np.random.default_rng(seed)
    hazard = rng.normal(scale=2.0, size=n)
    time = rng.exponential(np.exp(-hazard)) * 100
    return pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "role": "test",
            "time": time,
            "event": (rng.random(n) < 0.7).astype(int),
            "risk": hazard + np.random.default_rng(seed + 1).normal(scale=noise, size=n),
        }
    )


def test_survival_comparison_finds_the_better_method():
    good, bad = _survival(11, noise=0.2), _survival(11, noise=20.0)
    fg, fb = _folds(12, ["c_index"], centre=0.75), _folds(12, ["c_index"], centre=0.6)
    res = compare_methods(
        MethodResults("bad", fb, bad), MethodResults("good", fg, good), "survival", n_boot=200
    )
    want = concordance_index(good["time"], good["event"], good["risk"]) - concordance_index(
        bad["time"], bad["event"], bad["risk"]
    )
    assert res["diff_pooled"] == pytest.approx(want) and want > 0.1
    assert res["diff_pooled_test"] == "bootstrap-case-paired"
    assert res["diff_pooled_ci_low"] > 0 and res["diff_pooled_p"] < 0.05
    assert res["diff_cv"] == pytest.approx(0.15)
    assert res["verdict_pooled"].endswith(": distinguishable from noise at 5 %")
    row = summarise_method(fg, good, "survival", n_boot=100)
    assert row["c_index_pooled_ci_low"] < row["c_index_pooled"] < row["c_index_pooled_ci_high"]


def test_mismatched_inputs_are_one_clear_error():
    a, folds = _classification(13), _folds(14, CLS)
    with pytest.raises(PipelineError, match="same slide_ids"):
        compare_methods(
            MethodResults("a", folds, a), MethodResults("b", folds, a.iloc[1:]), "classification"
        )
    with pytest.raises(PipelineError, match="same folds"):
        compare_methods(
            MethodResults("a", folds, a), MethodResults("b", folds.iloc[1:], a), "classification"
        )
    flipped = a.assign(label=a["label"].map({"neg": "pos", "pos": "neg"}))
    with pytest.raises(PipelineError, match="true labels"):
        compare_methods(
            MethodResults("a", folds, a), MethodResults("b", folds, flipped), "classification"
        )
    with pytest.raises(PipelineError, match="not in"):
        summarise_method(folds, a.assign(label="other"), "classification")
    with pytest.raises(PipelineError, match="sizes"):
        compare_methods(
            MethodResults("a", folds.drop(columns="n_train"), a),
            MethodResults("b", folds, a),
            "classification",
        )


def test_one_class_pooled_auc_is_nan_not_an_error():
    one = _classification(15)
    one = one[one["label"] == "pos"]
    row = summarise_method(_folds(16, CLS), one, "classification", n_boot=50)
    assert np.isnan(row["auc_pooled"]) and np.isnan(row["auc_pooled_ci_low"])
    assert row["accuracy_pooled"] == pytest.approx((one["prediction"] == "pos").mean())


def test_pooled_rows_must_be_each_case_once_with_the_needed_columns():
    pred, folds = _classification(17), _folds(18, CLS)
    twice = pd.concat([pred, pred.iloc[:1]])
    with pytest.raises(PipelineError, match="slide_id s0 is predicted twice"):
        summarise_method(folds, twice, "classification")
    with pytest.raises(PipelineError, match="lack column.*risk"):
        summarise_method(
            _folds(18, ["c_index"]), _survival(1, 0.1).drop(columns="risk"), "survival"
        )
    with pytest.raises(PipelineError, match="lack column.*auc"):
        summarise_method(folds.drop(columns="auc"), pred, "classification")
    # train/val rows and later repeats are not pooled
    extra = pd.concat([pred, pred.assign(role="train"), pred.assign(repeat=1)]).fillna(
        {"repeat": 0}
    )
    row = summarise_method(folds, extra, "classification", n_boot=50)
    assert row["n_cases_pooled"] == 60 and row["pooled_repeat"] == 0


def test_statistics_import_no_torch_and_columns_are_stable():
    import subprocess
    import sys

    code = "import sys, pipeline.stats; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    cols = summary_columns("survival")
    assert cols[:8] == [
        "main_metric",
        "n_repeats",
        "n_folds",
        "cv_interval_over",
        "pooled_repeat",
        "n_cases_pooled",
        "n_boot",
        "seed",
    ]
    assert cols[8:16] == [
        f"c_index_{s}"
        for s in (
            "mean",
            "std",
            "ci_low",
            "ci_high",
            "pooled",
            "pooled_ci_low",
            "pooled_ci_high",
            "pooled_ci_method",
        )
    ]
    assert len(summary_columns("classification")) == 8 + 4 * 8 + 13
