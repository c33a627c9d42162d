"""Inner-CV model selection: the outer test fold is never read; the variants it returns are usable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.mil.data import FeatureBank
from pipeline.mil.models import create_mil_model
from pipeline.mil.precision import seed_everything
from pipeline.mil.selection import fit_selected, inner_folds
from pipeline.mil.splits import fold_roles, make_splits
from pipeline.mil.tasks import ClassificationTask
from pipeline.mil.train import assign_roles
from pipeline.settings import MILSettings

from .conftest import planted_bags


class SpyBank(FeatureBank):
    """A feature bank that records every slide whose features were read."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.read: set[str] = set()

    def get(self, slide, dtype=None):
        self.read.add(slide)
        return super().get(slide, dtype)


def _cohort():
    arrays, labels = planted_bags(n_bags=36, dim=8, n_min=6, n_max=12, seed=3)
    bank = SpyBank(FeatureBank.from_arrays(arrays)._tensors)
    task = ClassificationTask(labels)
    return task, task.make_bags(bank), bank, labels


CFG = MILSettings.from_mapping(
    {"epochs": 3, "hidden_dim": 8, "dropout": 0.0, "seed": 0, "lr": 1e-3, "weight_decay": 0.0}
)


def test_inner_cv_never_reads_the_outer_test_fold():
    """By construction on case ids: only the training part's slides are ever read."""
    task, bags, bank, labels = _cohort()
    strata, _ = task.case_strata()
    splits = make_splits(strata, folds=3, seed=0)
    parts = assign_roles(bags, fold_roles(splits, 0))
    train, test = parts["train"] + parts["val"], parts["test"]
    test_cases = {b.case_id for b in test}
    # slides 8k and 8k+1 share a case: both must sit on the same side of every inner split
    for tr, va in inner_folds(task, train, 3, seed=0):
        assert not {b.case_id for b in tr} & {b.case_id for b in va}
        assert {b.case_id for b in tr} | {b.case_id for b in va} == {b.case_id for b in train}
    cfg = CFG.replace(inner_folds=3)
    seed_everything(0)
    sel = fit_selected(
        lambda _inner=None: create_mil_model("abmil", 8, 2, cfg),
        task,
        train,
        cfg,
        torch.device("cpu"),
        exclude_case_ids=sorted(test_cases),
    )
    read_cases = set(labels.set_index("slide_id").loc[sorted(bank.read), "case_id"])
    assert read_cases == {b.case_id for b in train}
    assert not read_cases & test_cases
    assert sel.seen_case_ids == {b.case_id for b in train}
    assert sel.inner_scores.shape == (3, 3) and 1 <= sel.best_epoch <= 3
    assert len(sel.variants["ensemble"].models) == 3
    # every variant predicts the test fold: probabilities summing to 1
    for variant in ("inner_cv", "ensemble", "inner_cv_swa", "fixed"):
        out = sel.variants[variant].predict(task, test, torch.device("cpu"))
        assert out.shape == (len(test), 2)
        assert np.allclose(out.sum(1), 1, atol=1e-5)


def test_a_test_fold_case_in_the_training_part_is_refused():
    task, bags, _, _ = _cohort()
    with pytest.raises(PipelineError, match="test-fold case"):
        fit_selected(
            lambda _inner=None: create_mil_model("abmil", 8, 2, CFG),
            task,
            bags,
            CFG,
            torch.device("cpu"),
            exclude_case_ids=[bags[5].case_id],
        )


def test_too_few_cases_for_the_inner_folds_is_one_clear_error():
    task, bags, _, _ = _cohort()
    with pytest.raises(PipelineError, match="inner folds"):
        inner_folds(task, bags[:6], 5, seed=0)


@pytest.mark.parametrize("selection", ["inner_cv", "ensemble"])
def test_train_fold_with_inner_selection_never_reads_the_test_fold_until_predicting(
    tmp_path, monkeypatch, selection
):
    """train_fold under mil.selection: training and selection read only the training part's slides."""
    import json

    from pipeline.mil import selection as sel_module
    from pipeline.mil.train import train_fold

    task, bags, bank, labels = _cohort()
    strata, _ = task.case_strata()
    splits = make_splits(strata, folds=3, seed=0)
    test_cases = {c for c, r in fold_roles(splits, 1).items() if r == "test"}
    read_in_fit: set[str] = set()
    original = sel_module.fit_selected

    def spy(*args, **kwargs):
        bank.read.clear()
        out = original(*args, **kwargs)
        read_in_fit.update(bank.read)
        return out

    settings = CFG.replace(selection=selection, inner_folds=3, precision="fp32")
    monkeypatch.setattr(sel_module, "fit_selected", spy)
    result = train_fold(task, bags, splits, 1, "abmil", settings, outdir=tmp_path, device="cpu")
    case_of = labels.set_index("slide_id")["case_id"]
    assert read_in_fit and not set(case_of.loc[sorted(read_in_fit)]) & test_cases
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    meta = json.loads((tmp_path / "model.json").read_text())
    assert metrics["selection"] == meta["selection"] == selection
    assert metrics["inner_folds"] == 3 and 1 <= metrics["best_epoch"] <= 3
    assert metrics["n_bags"]["val"] == 0  # the validation part joined the training part
    assert metrics["n_bags"]["train"] + metrics["n_bags"]["test"] == len(bags)
    preds = pd.read_csv(tmp_path / "predictions.csv")
    test = preds[preds["role"] == "test"]
    assert set(test["case_id"]) == test_cases
    assert np.allclose(test[["score_0", "score_1"]].sum(1), 1, atol=1e-5)
    assert list(result.history["epoch"]) == [1, 2, 3] and result.history["best"].sum() == 1


def test_cv_survival_with_inner_cv_selection_and_cox_minibatches(tmp_path):
    """`wsi-mil cv` end to end with selection=inner_cv, survival_loss=cox over groups of 4 cases."""
    import json

    from pipeline.cli import main

    from .conftest import survival_bags, write_features

    arrays, surv, slides, _ = survival_bags(n_cases=30, dim=8)
    features = write_features(tmp_path / "features", arrays, "h5")
    surv.to_csv(tmp_path / "survival.csv", index=False)
    slides.to_csv(tmp_path / "labels.csv", index=False)
    overrides = ["epochs=3", "hidden_dim=8", "selection=inner_cv", "inner_folds=2"]
    overrides += ["survival_loss=cox", "accumulate=4"]
    argv = [
        "cv", "--features", features, "--labels", tmp_path / "survival.csv",
        "--slides-table", tmp_path / "labels.csv", "--task-type", "survival",
        "--method", "abmil", "--folds", 2, "-o", tmp_path / "out", *overrides,
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    for fold in (0, 1):
        folder = tmp_path / "out" / "abmil" / f"fold{fold}"
        metrics = json.loads((folder / "metrics.json").read_text())
        meta = json.loads((folder / "model.json").read_text())
        assert metrics["selection"] == "inner_cv" and 1 <= metrics["best_epoch"] <= 3
        assert meta["cfg"]["survival_loss"] == "cox" and meta["cfg"]["accumulate"] == 4
        assert metrics["test"]["cases"] == 15 and 0 <= metrics["test"]["c_index"] <= 1
    summary = json.loads((tmp_path / "out" / "abmil" / "summary.json").read_text())
    assert summary["folds"] == [0, 1]
