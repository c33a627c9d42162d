"""The trainer: every method learns a planted signal; selection, threshold, determinism, teachers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.mil.data import FeatureBank
from pipeline.mil.metrics import classification_metrics, youden_threshold
from pipeline.mil.models import method_info
from pipeline.mil.splits import make_splits
from pipeline.mil.tasks import ClassificationTask
from pipeline.mil.train import train_fold
from pipeline.settings import mil_settings

from .conftest import planted_bags

METHODS = [
    "abmil",
    "abmil_gated",
    "transmil",
    "dsmil",
    "msm",
    "mhim_abmil",
    "mhim_transmil",
    "mhim_dsmil",
]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """Train methods on fold 0 of a planted cohort on demand (baselines first, cached for teachers)."""
    arrays, labels = planted_bags(n_bags=120, dim=32, shift=6.0, seed=0)
    task = ClassificationTask(labels)
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    strata, val_strata = task.case_strata()
    splits = make_splits(strata, 3, 0, 0.3, val_strata)
    # the holdout trainer (one model per fold, early stopping on the val part): each method must learn
    # the signal by itself; the default ensemble selection is tested in test_ensemble_fold.py
    cfg = mil_settings(
        None, ["epochs=15", "patience=8", "hidden_dim=128", "lr=5e-4", "selection=holdout"]
    )
    root = tmp_path_factory.mktemp("planted")
    done: dict[str, dict] = {}

    def run(method: str) -> dict:
        if method not in done:
            baseline = method_info(method)["baseline"]
            if baseline:
                run(baseline)
            done[method] = train_fold(
                task,
                bags,
                splits,
                0,
                method,
                cfg,
                outdir=root / method,
                teacher_init=root / baseline if baseline else None,
                device="cpu",
            )
        return done[method]

    run.test_cases = set(splits[(splits.fold == 0) & (splits.role == "test")].case_id)
    return run


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_a_planted_signal(planted_run, method):
    result = planted_run(method)
    assert result.metrics["test"]["auc"] >= 0.9, result.metrics["test"]
    test = result.predictions.query("role == 'test'")
    assert set(test.case_id) == planted_run.test_cases
    assert result.metrics["n_bags"]["test"] == len(test) >= 40
    if method_info(method)["baseline"]:
        assert result.metrics["teacher"].endswith(method_info(method)["baseline"])


def test_selection_threshold_and_metrics_are_consistent(planted_run):
    result = planted_run("abmil")
    hist, pred = result.history, result.predictions
    # the restored model is the best epoch: its validation AUC is the best in the history
    best = hist.loc[hist["epoch"] == result.metrics["best_epoch"]].iloc[0]
    val = pred[pred.role == "val"]
    labels = (val["label"] == "1").to_numpy().astype(int)
    probs = val[["score_0", "score_1"]].to_numpy()
    assert classification_metrics(labels, probs, 0.5)["auc"] == pytest.approx(best["val_auc"])
    assert best["val_auc"] == hist["val_auc"].max()
    # the decision threshold is Youden's on the validation part, and the test metrics use it
    assert result.metrics["threshold"] == pytest.approx(youden_threshold(labels, probs[:, 1]))
    test = pred[pred.role == "test"]
    y = (test["label"] == "1").to_numpy().astype(int)
    expected = classification_metrics(
        y, test[["score_0", "score_1"]].to_numpy(), result.metrics["threshold"]
    )
    assert result.metrics["test"] == pytest.approx(expected)
    assert (
        test["prediction"] == np.where(test["score_1"] >= result.metrics["threshold"], "1", "0")
    ).all()
    # efficiency figures a user compares across methods
    eff = result.metrics["efficiency"]
    assert eff["parameters"] == sum(p.numel() for p in result.model.parameters())
    assert eff["train_seconds_per_epoch"] > 0 and eff["peak_rss_mb"] > 0
    assert eff["inference_slides_per_second"] > 0


def _tiny():
    arrays, labels = planted_bags(n_bags=24, dim=8, n_min=4, n_max=8, seed=3)
    task = ClassificationTask(labels)
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    splits = make_splits(task.case_strata()[0], 3, 0, 0.2)
    return task, bags, splits


def test_cpu_training_is_deterministic():
    task, bags, splits = _tiny()
    cfg = mil_settings(None, ["epochs=3", "hidden_dim=16"])
    a = train_fold(task, bags, splits, 1, "abmil", cfg, device="cpu")
    b = train_fold(task, bags, splits, 1, "abmil", cfg, device="cpu")
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    c = train_fold(
        task, bags, splits, 1, "abmil", mil_settings(None, ["epochs=3", "hidden_dim=16", "seed=5"])
    )
    assert not c.predictions["score_1"].equals(a.predictions["score_1"])


def test_paper_protocol_selects_on_test_and_says_so():
    task, bags, splits = _tiny()
    cfg = mil_settings(None, ["epochs=3", "hidden_dim=16", "protocol=paper"])
    result = train_fold(task, bags, splits, 0, "abmil", cfg, device="cpu")
    assert result.metrics["optimistic"] is True and result.metrics["selection"] == "test"
    assert "OPTIMISTIC" in result.metrics["note"]
    assert "test_auc" in result.history.columns
    # the whole training part (train + val) is trained on
    assert (
        len(result.predictions.query("role != 'test'"))
        == result.metrics["n_bags"]["train"] + result.metrics["n_bags"]["val"]
    )
    assert result.metrics["threshold_from"] == "test"


def test_mhim_without_teacher_fails_loudly():
    task, bags, splits = _tiny()
    cfg = mil_settings(None, ["epochs=1", "hidden_dim=16"])
    with pytest.raises(PipelineError, match="needs a teacher: the abmil model"):
        train_fold(task, bags, splits, 0, "mhim_abmil", cfg, device="cpu")


def test_youden_threshold_maximises_j_on_brute_force():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = np.round(np.clip(0.3 * y + rng.normal(0.4, 0.2, 60), 0, 1), 2)  # tied scores
    t = youden_threshold(y, s)

    def j(th):
        pred = s >= th
        return pred[y == 1].mean() - pred[y == 0].mean()

    best = max(j(c) for c in np.unique(s))
    assert j(t) == pytest.approx(best)
    assert t not in set(s)  # midway between scores, not on one


def test_multiclass_training_and_macro_auc():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(1)
    directions = rng.normal(size=(3, 8)) * 3
    arrays, rows = {}, []
    for i in range(36):
        label = ["a", "b", "c"][i % 3]
        x = rng.normal(size=(10, 8))
        x[:3] += directions[i % 3]
        arrays[f"s{i}"] = x.astype(np.float32)
        rows.append((f"s{i}", f"s{i}", label))
    task = ClassificationTask(pd.DataFrame(rows, columns=["slide_id", "case_id", "label"]))
    assert task.classes == ["a", "b", "c"] and task.n_outputs == 3
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    splits = make_splits(task.case_strata()[0], 3, 0, 0.25)
    result = train_fold(
        task, bags, splits, 0, "abmil", mil_settings(None, ["epochs=4", "hidden_dim=16"])
    )
    test = result.predictions.query("role == 'test'")
    probs = test[["score_a", "score_b", "score_c"]].to_numpy()
    y = test["label"].map(task.index).to_numpy()
    assert result.metrics["test"]["auc"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert result.metrics["test"]["f1"] == pytest.approx(
        f1_score(y, probs.argmax(1), average="macro")
    )
    assert (test["prediction"] == np.array(task.classes)[probs.argmax(1)]).all()
    assert result.metrics["threshold"] is None  # multi-class: argmax


def test_precision_auto_is_bf16_exactly_where_bfloat16_is_native():
    from pipeline.device import native_bf16
    from pipeline.mil.precision import training_precision

    cpu = torch.device("cpu")
    assert training_precision("auto", cpu, 1024 * 512) == ("bf16" if native_bf16(cpu) else "fp32")
    assert training_precision("auto", cpu, 166 * 256) == "fp32"  # small projection: casts dominate
    assert native_bf16(cpu) == bool(torch.cpu._is_avx512_bf16_supported())
    assert training_precision("fp32", cpu) == "fp32"
    assert training_precision("bf16", cpu) == "bf16"
    with pytest.raises(PipelineError, match="unknown precision"):
        training_precision("fp16", cpu)


def test_precision_is_recorded_and_both_precisions_are_deterministic(tmp_path):
    arrays, labels = planted_bags(n_bags=24, dim=8, seed=2)
    task = ClassificationTask(labels)
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    splits = make_splits(task.case_strata()[0], 3, 0, 0.25, task.case_strata()[1])
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = mil_settings(None, ["epochs=3", "hidden_dim=16", f"precision={precision}"])
        runs[precision] = train_fold(
            task, bags, splits, 0, "abmil", cfg, outdir=tmp_path / precision, device="cpu"
        )
        assert runs[precision].metrics["efficiency"]["precision"] == precision
        meta = (tmp_path / precision / "model.json").read_text()
        assert f'"precision": "{precision}"' in meta
    for precision in ("fp32", "bf16"):  # both are deterministic on CPU
        cfg = mil_settings(None, ["epochs=3", "hidden_dim=16", f"precision={precision}"])
        again = train_fold(task, bags, splits, 0, "abmil", cfg, device="cpu")
        pd.testing.assert_frame_equal(again.predictions, runs[precision].predictions)
    # bf16 and fp32 runs differ only by rounding: same bags ranked alike
    p32 = runs["fp32"].predictions.set_index("slide_id").filter(like="score").iloc[:, -1]
    p16 = runs["bf16"].predictions.set_index("slide_id").filter(like="score").iloc[:, -1]
    assert np.corrcoef(p32, p16.loc[p32.index])[0, 1] > 0.9
