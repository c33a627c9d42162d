"""The all-cases model of external validation (`mil.external_all_cases`, `wsi-mil cv
--external-all-cases`): trained on every case for the median best epoch of the CV folds, no
selection; its external predictions are `wsi-mil predict`'s and get their own summary rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.mil.all_cases import median_best_epoch

from .conftest import write_cohort_with_external

FAST = ["epochs=4", "patience=4", "hidden_dim=8"]


@pytest.fixture(scope="module")
def all_cases_cv(tmp_path_factory):
    work = tmp_path_factory.mktemp("all_cases")
    features, ext_features = write_cohort_with_external(work)
    argv = [
        "cv", "--features", features, "--labels", work / "labels.csv", "--method", "mhim_abmil",
        "--folds", 2, "--repeats", 2, "--n-boot", 200, "--external-features", ext_features,
        "--external-labels", work / "ext_labels.csv", "--external-all-cases", "-o", work / "out",
        *FAST,
    ]  # fmt: skip
    torch.set_num_threads(1)
    assert main([str(a) for a in argv]) == 0
    return work, pd.read_csv(work / "labels.csv")


def _fold_best_epochs(out, method) -> list[int]:
    return [
        json.loads((out / method / f"repeat{r}" / f"fold{k}" / "metrics.json").read_text())[
            "best_epoch"
        ]
        for r in (0, 1)
        for k in (0, 1)
    ]


def test_all_cases_model_sees_every_case_for_the_median_best_epoch(all_cases_cv):
    work, labels = all_cases_cv
    out = work / "out"
    for method in ("abmil", "mhim_abmil"):
        folder = out / method / "all_cases"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["case_ids"] == sorted(labels["case_id"].astype(str).unique())
        predictions = pd.read_csv(folder / "predictions.csv")
        assert sorted(predictions["slide_id"]) == sorted(labels["slide_id"])
        assert set(predictions["role"]) == {"train"}
        best = sorted(_fold_best_epochs(out, method))  # 4 folds: mean of the middle two, half up
        middle = (best[1] + best[2]) / 2
        expected = int(middle) + (1 if middle - int(middle) >= 0.5 else 0)
        assert metrics["best_epoch"] == metrics["epochs_run"] == expected
        assert sorted(metrics["fold_best_epochs"]) == best
        assert len(pd.read_csv(folder / "history.csv")) == expected
        meta = json.loads((folder / "model.json").read_text())
        assert meta["fold"] is None and meta["selection"] == "median_best_epoch"
    teacher = json.loads((out / "mhim_abmil" / "all_cases" / "metrics.json").read_text())["teacher"]
    assert teacher == str(out / "abmil" / "all_cases")


def test_all_cases_external_predictions_equal_wsi_mil_predict(all_cases_cv):
    work, _ = all_cases_cv
    for method in ("abmil", "mhim_abmil"):
        by_hand = work / f"hand_{method}.csv"
        argv = [
            "predict", "--model", work / "out" / method / "all_cases", "--features",
            work / "ext_features", "--labels", work / "ext_labels.csv", "-o", by_hand,
            "--metrics", by_hand.with_suffix(".json"),
        ]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
        ours = work / "out" / "external_all_cases" / method / "all_cases.csv"
        got = pd.read_csv(ours)
        assert len(got) == 20 and got["slide_id"].str.startswith("ext_").all()
        pd.testing.assert_frame_equal(got, pd.read_csv(by_hand))
        m_hand = json.loads(by_hand.with_suffix(".json").read_text())["metrics"]
        assert json.loads(ours.with_suffix(".json").read_text())["metrics"] == m_hand


def test_all_cases_rows_in_the_summary_with_intervals(all_cases_cv):
    work, _ = all_cases_cv
    table = pd.read_csv(work / "out" / "summary.csv")
    assert list(table["cohort"]) == ["cv"] * 2 + ["external"] * 2 + ["external_all_cases"] * 2
    rows = table[table["cohort"] == "external_all_cases"].set_index("method")
    preds = pd.read_csv(work / "out" / "external_all_cases" / "mhim_abmil" / "all_cases.csv")
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(preds["label"].astype(int), preds["score_1"])
    assert rows.loc["mhim_abmil", "auc_pooled"] == pytest.approx(auc)
    assert (
        rows.loc["mhim_abmil", "auc_pooled_ci_low"]
        <= auc
        <= rows.loc["mhim_abmil", "auc_pooled_ci_high"]
    )
    assert rows.loc["mhim_abmil", "reference"] == "abmil"
    assert np.isfinite(rows.loc["mhim_abmil", "diff_pooled"])


def test_median_best_epoch_rounds_half_up_and_refuses_missing_epochs():
    assert median_best_epoch([{"best_epoch": e} for e in (3, 1, 2)]) == (2, [3, 1, 2])
    assert median_best_epoch([{"best_epoch": e} for e in (1, 2)])[0] == 2
    with pytest.raises(Exception, match="no best epoch"):
        median_best_epoch([{"best_epoch": 2}, {}])


def test_report_shows_the_all_cases_rows_in_their_own_part(all_cases_cv):
    from pipeline.report import collect, comparisons

    work, _ = all_cases_cv
    models, external = comparisons.split_cohorts(
        collect.model_results(work / "out" / "summary.csv")
    )
    assert list(models["cohort"]) == ["cv", "cv"]
    assert sorted(external["cohort"]) == ["external"] * 2 + ["external_all_cases"] * 2
    page = comparisons.section_html(models, external)
    fold_part, all_part = page.split("External cohort: one model trained on all cases")
    assert "External cohort</h4>" in fold_part and "mhim_abmil" in all_part
    auc = pd.read_csv(work / "out" / "summary.csv").query("cohort == 'external_all_cases'")
    assert f"{auc['auc_pooled'].iloc[1]:.3f}" in all_part


def test_evaluate_external_on_the_all_cases_file_gives_the_cv_summary(all_cases_cv, tmp_path):
    """The workflow's external_evaluate_all_cases job (`wsi-mil evaluate --external all_cases.csv`)."""
    work, _ = all_cases_cv
    folder = work / "out" / "external_all_cases" / "mhim_abmil"
    argv = ["evaluate", "--external", folder / "all_cases.csv", "-o", tmp_path / "s.json"]
    assert main([str(a) for a in argv]) == 0
    ours = json.loads((tmp_path / "s.json").read_text())
    cv = json.loads((folder / "summary.json").read_text())
    assert ours["cohort"] == cv["cohort"] == "external_all_cases"
    assert ours["method"] == "mhim_abmil" and ours["folds"] == [-1]
    assert ours["stats"]["auc_pooled"] == pytest.approx(cv["stats"]["auc_pooled"])


def test_train_all_cases_command_gives_the_cv_model(all_cases_cv, tmp_path):
    """The workflow's train_all_cases job: the same model as `wsi-mil cv` trained (CPU, seeded)."""
    from pipeline.mil.folder import FoldFolder

    work, _ = all_cases_cv
    out = work / "out"
    folds = [out / "abmil" / f"repeat{r}" / f"fold{k}" for r in (0, 1) for k in (0, 1)]
    argv = [
        "train-all-cases", "--features", work / "features", "--labels", work / "labels.csv",
        "--method", "abmil", "--folds", *folds, "-o", tmp_path / "all", *FAST,
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    ours, cv = FoldFolder(tmp_path / "all"), FoldFolder(out / "abmil" / "all_cases")
    assert ours.metrics()["best_epoch"] == cv.metrics()["best_epoch"]
    a, b = torch.load(ours.file("model")), torch.load(cv.file("model"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
