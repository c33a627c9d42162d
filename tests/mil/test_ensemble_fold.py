"""The default selection, ``ensemble_full``, end to end on one fold: the fold folder holds the three
inner-fold models and the whole-training-part model, and everything that reads it later (``wsi-mil
predict``, heatmap scores, an MHIM teacher) applies exactly the ensemble whose test metrics the fold
reports. Also: a cohort too small for inner folds is
refused when the folds are drawn, before any training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.mil.folder import FoldFolder
from pipeline.mil.inference import run_inference
from pipeline.mil.models.ensemble import EnsembleMIL
from pipeline.mil.scores import score_bag
from pipeline.mil.splits import check_inner_folds, make_splits
from pipeline.settings import mil_settings

from .conftest import planted_bags, write_features

FAST = ["epochs=4", "patience=4", "hidden_dim=8"]


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def fold(tmp_path_factory):
    """abmil and mhim_abmil trained on fold 0 of 36 planted bags with the default selection."""
    work = tmp_path_factory.mktemp("ensemble")
    arrays, labels = planted_bags(n_bags=36, dim=16, n_min=8, n_max=20, seed=3)
    features = write_features(work / "features", arrays)
    labels.to_csv(work / "labels.csv", index=False)
    assert _cli("splits", work / "labels.csv", "-o", work / "splits.csv", "--folds", 3) == 0
    torch.set_num_threads(1)
    common = ["--features", features, "--labels", work / "labels.csv", "--splits"]
    common += [work / "splits.csv", "--fold", 0]
    assert _cli("train", *common, "--method", "abmil", "-o", work / "abmil", *FAST) == 0
    assert (
        _cli(
            "train",
            *common,
            "--method",
            "mhim_abmil",
            "--teacher-init",
            work / "abmil",
            "-o",
            work / "mhim",
            *FAST,
        )  # fmt: skip
        == 0
    )
    return work, arrays


def test_the_fold_folder_holds_the_inner_models_and_the_whole_part_model(fold):
    work, _ = fold
    meta = json.loads((work / "abmil" / "model.json").read_text())
    metrics = json.loads((work / "abmil" / "metrics.json").read_text())
    assert metrics["selection"] == "ensemble_full" and meta["ensemble"] == 4
    assert meta["ensemble_members"] == ["inner0", "inner1", "inner2", "whole"]
    model, _ = FoldFolder(work / "abmil").load_model("cpu")
    assert isinstance(model, EnsembleMIL) and len(model.members) == 4
    # four different models (different training cases), not copies
    first = [next(iter(m.state_dict().values())) for m in model.members]
    assert all(not torch.equal(first[i], first[j]) for i in range(4) for j in range(i))
    # the validation part joined training: no val rows, every non-test case trained on
    pred = pd.read_csv(work / "abmil" / "predictions.csv")
    assert set(pred["role"]) == {"train", "test"}
    # the binary threshold comes from the training cases scored out of fold by the inner models
    assert metrics["threshold_from"] == "inner_out_of_fold"
    assert 0 <= metrics["inner_out_of_fold"]["auc"] <= 1 and 0 < metrics["threshold"] < 1


def test_predict_reproduces_the_fold_test_predictions_as_the_mean_of_the_members(fold, tmp_path):
    work, arrays = fold
    for name in ("abmil", "mhim"):
        out = tmp_path / f"{name}.csv"
        argv = ["predict", "--model", work / name, "--features", work / "features", "-o", out]
        assert _cli(*argv) == 0
        fold_pred = pd.read_csv(work / name / "predictions.csv")
        test = fold_pred[fold_pred["role"] == "test"].set_index("slide_id")
        got = pd.read_csv(out).set_index("slide_id").loc[test.index]
        np.testing.assert_allclose(got["score_1"], test["score_1"], rtol=0, atol=1e-6)
    # the ensemble's probability is its members' mean probability, not the softmax of mean logits
    model, _ = FoldFolder(work / "abmil").load_model("cpu")
    fold_pred = pd.read_csv(work / "abmil" / "predictions.csv")
    test = fold_pred[fold_pred["role"] == "test"].set_index("slide_id")
    slide = test.index[0]
    x = torch.as_tensor(arrays[slide], dtype=torch.float32)
    probs = [torch.softmax(m(x)["logits"], 1)[0, 1].item() for m in model.members]
    assert test.loc[slide, "score_1"] == pytest.approx(np.mean(probs), abs=1e-5)  # csv: 7 digits


def test_heatmap_scores_of_an_ensemble_are_the_members_mean_attention(fold):
    work, arrays = fold
    model, _ = FoldFolder(work / "abmil").load_model("cpu")
    bag = next(iter(arrays.values()))
    maps, logits = score_bag(model, bag)
    per_member = [score_bag(m, bag) for m in model.members]
    np.testing.assert_allclose(
        maps["attention"], np.mean([m[0]["attention"] for m in per_member], 0), atol=1e-7
    )
    assert maps["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert logits.shape == (2,)


def test_each_mhim_model_starts_from_the_baseline_member_trained_on_the_same_cases(fold):
    work, _ = fold
    baseline, _ = FoldFolder(work / "abmil").load_model("cpu")
    folder = FoldFolder(work / "abmil")
    # inner model f <- the baseline's inner model f; the whole-part model (None) <- the baseline's
    for member, label in ((0, "inner0"), (1, "inner1"), (2, "inner2"), (None, "whole")):
        state = folder.teacher_state("mhim_abmil", "abmil", 0, 16, 2, member=member)
        expected = baseline.members[baseline.labels.index(label)].state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], v) for k, v in expected.items())
    with pytest.raises(PipelineError, match="has 4 models"):
        folder.teacher_state("mhim_abmil", "abmil", 0, 16, 2, member=4)


def test_run_inference_on_an_ensemble_averages_the_members_losses_too(fold):
    from pipeline.mil.data import FeatureBank
    from pipeline.mil.tasks import ClassificationTask

    work, arrays = fold
    labels = pd.read_csv(work / "labels.csv")
    task = ClassificationTask(labels)
    bags = task.make_bags(FeatureBank.from_arrays(arrays))[:5]
    model, _ = FoldFolder(work / "abmil").load_model("cpu")
    out, loss, _ = run_inference(model, task, bags, torch.device("cpu"))
    runs = [run_inference(m, task, bags, torch.device("cpu")) for m in model.members]
    np.testing.assert_allclose(out, np.mean([r[0] for r in runs], 0), atol=1e-7)
    assert loss == pytest.approx(np.mean([r[1] for r in runs]), rel=1e-6)


def test_a_cohort_too_small_for_inner_folds_is_refused_when_the_folds_are_drawn(tmp_path):
    labels = pd.DataFrame(
        {"slide_id": [f"s{i}" for i in range(8)], "case_id": [f"c{i}" for i in range(8)]}
    ).assign(label=[0, 0, 0, 0, 0, 1, 1, 1])
    labels.to_csv(tmp_path / "labels.csv", index=False)
    # 3 positives in 2 folds: a training part holds 1 or 2 of them, fewer than 3 inner folds need
    code = _cli("splits", tmp_path / "labels.csv", "-o", tmp_path / "s.csv", "--folds", 2)
    assert code != 0 and not (tmp_path / "s.csv").exists()
    strata = labels.set_index("case_id")["label"]
    splits = make_splits(strata, folds=2, seed=0)
    with pytest.raises(PipelineError, match="too few for 3 inner folds"):
        check_inner_folds(splits, strata, mil_settings(None, []))  # the defaults
    with pytest.raises(PipelineError, match="too few for 2 inner folds"):
        check_inner_folds(splits, strata, mil_settings(None, ["inner_folds=2"]))
    # nothing is selected inside the training part: nothing to check
    check_inner_folds(splits, strata, mil_settings(None, ["selection=holdout"]))
    check_inner_folds(splits, strata, mil_settings(None, ["protocol=paper"]))
