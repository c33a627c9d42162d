"""External validation in `wsi-mil cv`: every fold model predicts a second cohort exactly as
`wsi-mil predict` does, and the summary gains external rows with intervals and the comparison."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.stats import summarise_method

from .conftest import write_cohort_with_external

FAST = ["epochs=2", "patience=2", "hidden_dim=8"]


@pytest.fixture(scope="module")
def external_cv(tmp_path_factory):
    work = tmp_path_factory.mktemp("external")
    features, ext_features = write_cohort_with_external(work)
    argv = [
        "cv", "--features", features, "--labels", work / "labels.csv", "--method", "mhim_abmil",
        "--folds", 2, "--n-boot", 200, "--external-features", ext_features,
        "--external-labels", work / "ext_labels.csv", "-o", work / "out", *FAST,
    ]  # fmt: skip
    torch.set_num_threads(1)
    assert main([str(a) for a in argv]) == 0
    return work


def test_fold_model_predictions_on_the_external_cohort_equal_wsi_mil_predict(external_cv):
    work = external_cv
    for method in ("abmil", "mhim_abmil"):
        for fold in (0, 1):
            by_hand = work / f"hand_{method}_{fold}.csv"
            argv = [
                "predict", "--model", work / "out" / method / f"fold{fold}", "--features",
                work / "ext_features", "--labels", work / "ext_labels.csv", "-o", by_hand,
                "--metrics", by_hand.with_suffix(".json"),
            ]  # fmt: skip
            assert main([str(a) for a in argv]) == 0
            ours = work / "out" / "external" / method / f"fold{fold}.csv"
            expected, got = pd.read_csv(by_hand), pd.read_csv(ours)
            assert len(got) == 20 and got["slide_id"].str.startswith("ext_").all()
            pd.testing.assert_frame_equal(got, expected)
            m_hand = json.loads(by_hand.with_suffix(".json").read_text())["metrics"]
            m_ours = json.loads(ours.with_suffix(".json").read_text())["metrics"]
            assert m_ours == m_hand


def test_external_rows_have_intervals_of_the_fold_model_ensemble(external_cv):
    work = external_cv
    table = pd.read_csv(work / "out" / "summary.csv")
    ext = table[table["cohort"] == "external"].set_index("method")
    assert list(ext.index) == ["abmil", "mhim_abmil"]
    assert list(table[table["cohort"] == "cv"]["method"]) == ["abmil", "mhim_abmil"]
    # the ensemble by hand: mean scores of the two fold models per slide
    folds = [pd.read_csv(work / "out" / "external" / "mhim_abmil" / f"fold{k}.csv") for k in (0, 1)]
    both = pd.concat(folds)
    mean = both.groupby("slide_id")[["score_0", "score_1"]].mean()
    assert ext.loc["mhim_abmil", "auc_pooled"] == pytest.approx(
        _auc(folds[0].set_index("slide_id").loc[mean.index, "label"], mean["score_1"])
    )
    metrics = [json.loads((work / "out/external/mhim_abmil" / f"fold{k}.json").read_text()) for k in (0, 1)]  # fmt: skip
    assert ext.loc["mhim_abmil", "auc_mean"] == pytest.approx(
        (metrics[0]["metrics"]["auc"] + metrics[1]["metrics"]["auc"]) / 2
    )
    assert ext.loc["mhim_abmil", "reference"] == "abmil"
    assert pd.notna(ext.loc["mhim_abmil", "diff_pooled_p"])
    assert pd.isna(ext.loc["mhim_abmil", "diff_cv"])  # no CV test on one fixed external cohort
    fold_metrics = pd.DataFrame([{"fold": k, **m["metrics"]} for k, m in enumerate(metrics)])
    stats = summarise_method(fold_metrics, _ensemble(folds), "classification", n_boot=200)
    assert ext.loc["mhim_abmil", "auc_pooled_ci_low"] == pytest.approx(stats["auc_pooled_ci_low"])


def _auc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(labels.astype(int), scores)


def _ensemble(folds) -> pd.DataFrame:
    both = pd.concat(folds)
    out = both.groupby("slide_id").agg(
        case_id=("case_id", "first"), label=("label", "first"), score_0=("score_0", "mean"),
        score_1=("score_1", "mean"), prediction=("prediction", lambda s: s.astype(str).mode().iloc[0]),
    )  # fmt: skip
    return out.reset_index()
