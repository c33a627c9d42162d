"""The batched inner-CV trainer (:mod:`pipeline.mil.stacked`) gives the predictions of the
one-model-at-a-time reference path (``stacked=False``, the code the default selection ran before the
batched path existed) with the same seeds: same chosen epoch, same inner curves, same fold predictions
up to float rounding, with dropout on and inner training parts of different sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.mil import selection, stacked
from pipeline.mil.data import FeatureBank
from pipeline.mil.splits import make_splits
from pipeline.mil.tasks import ClassificationTask, SurvivalTask
from pipeline.mil.train import train_fold
from pipeline.settings import mil_settings

from .conftest import planted_bags, survival_bags

FIT_SELECTED, STACKED_EPOCH = selection.fit_selected, stacked.stacked_epoch
SETTINGS = ["epochs=6", "patience=3", "hidden_dim=16", "lr=1e-3", "dropout=0.25", "precision=fp32"]


def _classification():
    arrays, labels = planted_bags(n_bags=30, dim=12, n_min=6, n_max=20, seed=5)
    task = ClassificationTask(labels)
    return task, task.make_bags(FeatureBank.from_arrays(arrays))


def _survival():
    arrays, surv, slides, _ = survival_bags(n_cases=30, dim=12, seed=1)
    task = SurvivalTask(surv, slides, n_bins=4)
    return task, task.make_bags(FeatureBank.from_arrays(arrays))


def _fold(make, method, monkeypatch, use_stacked):
    """Fold 0 under the default selection; how many epochs went through the batched path."""
    task, bags = make()
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, 3, 0, 0.15, val_strata)
    calls = []

    def fit(*args, **kwargs):
        return FIT_SELECTED(*args, **{**kwargs, "stacked": use_stacked})

    def epoch(*args, **kwargs):
        calls.append(1)
        return STACKED_EPOCH(*args, **kwargs)

    monkeypatch.setattr(selection, "fit_selected", fit)
    monkeypatch.setattr(stacked, "stacked_epoch", epoch)
    torch.set_num_threads(1)
    result = train_fold(task, bags, splits, 0, method, mil_settings(None, SETTINGS), device="cpu")
    return result, len(calls)


@pytest.mark.parametrize(
    "make,method",
    [(_classification, "abmil"), (_classification, "abmil_std"), (_survival, "abmil_std")],
)
def test_batched_inner_models_predict_as_the_one_at_a_time_reference(make, method, monkeypatch):
    ref, ref_calls = _fold(make, method, monkeypatch, use_stacked=False)
    new, new_calls = _fold(make, method, monkeypatch, use_stacked=True)
    assert ref_calls == 0 and new_calls == new.metrics["epochs_run"] >= 2  # the batched path ran
    assert new.metrics["selection"] == "ensemble_full"
    assert new.metrics["best_epoch"] == ref.metrics["best_epoch"]
    # every number of predictions.csv: scores / risk and survival curves, labels, times
    cols = list(ref.predictions.select_dtypes("number").columns)
    assert len(cols) >= 2 and list(new.predictions.columns) == list(ref.predictions.columns)
    assert list(new.predictions["case_id"]) == list(ref.predictions["case_id"])
    np.testing.assert_allclose(
        new.predictions[cols].to_numpy(), ref.predictions[cols].to_numpy(), rtol=0, atol=1e-5
    )
    metric = f"inner_{new.metrics['selection_metric']}"
    np.testing.assert_allclose(new.history[metric], ref.history[metric], atol=1e-6)
    np.testing.assert_allclose(new.history["train_loss"], ref.history["train_loss"], rtol=1e-5)


def test_the_inner_training_parts_differ_in_size_so_a_model_sits_out_steps():
    """The lockstep path must skip the models whose epoch is shorter (no Adam step on no bag)."""
    task, bags = _classification()
    sizes = {len(tr) for tr, _ in selection.inner_folds(task, bags[:24], 3, seed=0)}
    assert len(sizes) > 1


def test_methods_outside_the_abmil_family_train_one_at_a_time():
    from pipeline.mil.models import create_mil_model

    cfg = mil_settings(None, ["hidden_dim=16"])
    for method, expected in [("abmil", True), ("abmil_std", True), ("transmil", False)]:
        models = [create_mil_model(method, 8, 2, cfg) for _ in range(3)]
        assert stacked.can_stack(models, cfg) is expected, method
    abmil = [create_mil_model("abmil", 8, 2, cfg) for _ in range(3)]
    assert not stacked.can_stack(abmil, cfg.replace(accumulate=4))


def test_on_cpu_the_default_trains_one_model_at_a_time(monkeypatch):
    """The batched path measured slower on CPU (BENCHMARKS.md): it runs there only when asked for."""
    from pipeline.mil.models import create_mil_model

    task, bags = _classification()
    cfg = mil_settings(None, SETTINGS)
    task.configure(cfg)
    task.fit(bags)
    task.encode(bags)
    device = torch.device("cpu")
    runners = [
        selection.EpochRunner(
            create_mil_model("abmil", 12, 2, cfg), task, bags[:6], cfg, device, 2, "fp32"
        )
        for _ in range(3)
    ]
    calls = []
    monkeypatch.setattr(stacked, "stacked_epoch", lambda *a, **k: calls.append(1) or [0.0] * 3)
    selection.advance(runners)
    assert calls == [] and [r.epoch for r in runners] == [1, 1, 1]
    selection.advance(runners, stacked=True)
    assert calls == [1]
