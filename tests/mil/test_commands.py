"""The MIL commands end to end on a small on-disk cohort: every contracted output, with its columns."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.mil import folder as folder_module
from pipeline.mil import train as train_module
from pipeline.settings import mil_settings

from .conftest import survival_bags, write_features

FAST = ["epochs=3", "patience=3", "hidden_dim=16"]


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def cohort(small_cohort, tmp_path_factory):
    """labels.csv naming one slide without features, the zarr features, 3-fold splits."""
    root, arrays, labels = small_cohort
    work = tmp_path_factory.mktemp("cmd")
    extra = pd.DataFrame({"slide_id": ["ghost"], "case_id": ["ghostcase"], "label": [1]})
    pd.concat([labels, extra]).to_csv(work / "labels.csv", index=False)
    assert _cli("splits", work / "labels.csv", "-o", work / "splits.csv", "--folds", 3) == 0
    return work, root / "features", arrays, labels


def _train(cohort, out, *extra, method="abmil", fold=0):
    work, features, _, _ = cohort
    return _cli(
        "train", "--features", features, "--labels", work / "labels.csv", "--splits",
        work / "splits.csv", "--fold", fold, "--method", method, "-o", out, *extra, *FAST,
    )  # fmt: skip


def test_splits_command_writes_case_fold_role(cohort):
    work, _, _, labels = cohort
    splits = pd.read_csv(work / "splits.csv", dtype={"case_id": str})
    assert list(splits.columns) == ["case_id", "fold", "role"]
    cases = set(labels.case_id) | {"ghostcase"}
    assert set(splits.case_id) == cases and len(splits) == 3 * len(cases)
    assert splits.groupby("case_id")["role"].apply(lambda r: (r == "test").sum()).eq(1).all()


def test_train_writes_every_output_and_reports_the_missing_slide(cohort, tmp_path, caplog):
    out = tmp_path / "fold0"
    with caplog.at_level(logging.WARNING):
        assert _train(cohort, out) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "metrics.json", "model.json", "model.pt", "predictions.csv",
    ]  # fmt: skip
    assert "slide ghost: in the labels but no feature store" in caplog.text
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a state dict only
    hist = pd.read_csv(out / "history.csv")
    # the default selection (ensemble): the inner models' mean losses and AUC per epoch
    assert list(hist.columns) == [
        "epoch", "train_loss", "inner_loss", "inner_auc", "inner_auc_smoothed", "lr",
        "train_seconds", "best",
    ]  # fmt: skip
    assert hist["best"].sum() == 1 and np.isfinite(hist[["train_loss", "inner_loss"]]).all().all()
    assert len(hist) == 3
    pred = pd.read_csv(
        out / "predictions.csv", dtype={"slide_id": str, "case_id": str, "label": str}
    )
    assert list(pred.columns) == [
        "slide_id", "case_id", "role", "label", "score_0", "score_1", "prediction",
    ]  # fmt: skip
    np.testing.assert_allclose(pred[["score_0", "score_1"]].sum(axis=1), 1, atol=1e-5)
    _, _, arrays, _ = cohort
    assert set(pred.slide_id) == set(arrays)  # the ghost slide is left out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["missing_slides"] == ["ghost"]
    assert set(metrics["test"]) == {"auc", "accuracy", "balanced_accuracy", "f1"}
    assert metrics["optimistic"] is False and metrics["protocol"] == "holdout"
    assert metrics["n_bags"] == {r: int((pred.role == r).sum()) for r in ("train", "val", "test")}
    for key in (
        "parameters",
        "train_seconds_per_epoch",
        "peak_rss_mb",
        "inference_slides_per_second",
    ):
        assert metrics["efficiency"][key] > 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["method"] == "abmil" and meta["in_dim"] == 16 and meta["n_outputs"] == 2
    assert (
        meta["task"]["classes"] == ["0", "1"] and meta["task"]["threshold"] == metrics["threshold"]
    )


def test_evaluate_and_predict_reproduce_the_folds(cohort, tmp_path):
    work, features, arrays, _ = cohort
    dirs = [tmp_path / f"fold{k}" for k in range(2)]
    for k, d in enumerate(dirs):
        assert _train(cohort, d, fold=k) == 0
    assert _cli("evaluate", *dirs, "-o", tmp_path / "summary.json") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    per_fold = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    for name in ("auc", "accuracy", "balanced_accuracy", "f1"):
        values = [m["test"][name] for m in per_fold]
        assert summary["metrics"][name]["mean"] == pytest.approx(np.mean(values))
        assert summary["metrics"][name]["std"] == pytest.approx(np.std(values))
    assert summary["n_folds"] == 2 and summary["optimistic"] is False
    assert summary["efficiency"]["parameters"]["mean"] == per_fold[0]["efficiency"]["parameters"]
    # predict rebuilds the model from model.json + model.pt: same scores as at training time
    assert _cli(
        "predict", "--model", dirs[0], "--features", features, "-o", tmp_path / "pred.csv",
        "--labels", work / "labels.csv", "--metrics", tmp_path / "ext.json",
    ) == 0  # fmt: skip
    pred = pd.read_csv(tmp_path / "pred.csv", dtype={"slide_id": str})
    trained = pd.read_csv(dirs[0] / "predictions.csv", dtype={"slide_id": str})
    merged = trained.merge(pred, on="slide_id", suffixes=("", "_new"))
    assert len(merged) == len(arrays)
    np.testing.assert_allclose(merged["score_1"], merged["score_1_new"], atol=1e-6)
    assert (merged["prediction"] == merged["prediction_new"]).all()
    ext = json.loads((tmp_path / "ext.json").read_text())
    assert set(ext["metrics"]) == {"auc", "accuracy", "balanced_accuracy", "f1"}
    assert ext["missing_slides"] == ["ghost"]


def test_paper_protocol_is_labelled_optimistic_everywhere(cohort, tmp_path, caplog):
    out = tmp_path / "paper"
    with caplog.at_level(logging.INFO):
        assert _train(cohort, out, "protocol=paper") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimistic"] is True and "OPTIMISTIC" in metrics["note"]
    assert "OPTIMISTIC" in caplog.text
    assert pd.read_csv(out / "predictions.csv")["optimistic"].all()
    assert json.loads((out / "model.json").read_text())["optimistic"] is True
    assert _cli("evaluate", out, "-o", tmp_path / "s.json") == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["optimistic"] is True and "OPTIMISTIC" in summary["note"]


def test_teacher_missing_or_mismatched_fails_with_one_line(cohort, tmp_path, capsys):
    base = tmp_path / "abmil0"
    assert _train(cohort, base) == 0
    capsys.readouterr()
    assert _train(cohort, tmp_path / "m", method="mhim_abmil", fold=0) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a teacher" in err[0] and err[0].startswith("ERROR")
    assert (
        _train(cohort, tmp_path / "m", "--teacher-init", tmp_path / "nope", method="mhim_abmil")
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "teacher checkpoint not found" in err[0]
    assert _train(cohort, tmp_path / "m", "--teacher-init", base, method="mhim_transmil") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is a abmil model, mhim_transmil needs transmil" in err[0]
    assert _train(cohort, tmp_path / "m", "--teacher-init", base, method="mhim_abmil", fold=1) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on fold 0, this is fold 1" in err[0]
    assert not (tmp_path / "m").exists()
    # the teacher that matches is accepted
    assert _train(cohort, tmp_path / "m", "--teacher-init", base, method="mhim_abmil") == 0


def test_interrupted_training_leaves_no_complete_looking_output(cohort, tmp_path, monkeypatch):
    out = tmp_path / "fold0"
    real = folder_module.write_json

    def fail_on_metrics(path, data):
        if str(path).endswith("metrics.json"):
            raise KeyboardInterrupt  # the job dies while publishing
        real(path, data)

    monkeypatch.setattr(folder_module, "write_json", fail_on_metrics)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_fold(*_fold_inputs(cohort), outdir=out, device="cpu")
    assert not (out / "metrics.json").exists()  # the fold does not look complete
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
    monkeypatch.setattr(folder_module, "write_json", real)
    assert _train(cohort, out) == 0 and (out / "metrics.json").exists()


def _fold_inputs(cohort):
    from pipeline.mil.splits import read_splits
    from pipeline.mil.tasks import ClassificationTask

    work, features, _, _ = cohort
    task = ClassificationTask.from_csv(work / "labels.csv")
    bags, _, _ = train_module.prepare_data(task, features)
    cfg = mil_settings(None, FAST)
    return task, bags, read_splits(work / "splits.csv"), 0, "abmil", cfg


def test_cv_runs_baseline_then_mhim_and_resumes(cohort, tmp_path, caplog):
    work, features, _, _ = cohort
    argv = [
        "cv", "--features", features, "--labels", work / "labels.csv", "--method", "mhim_abmil",
        "--folds", 2, "-o", tmp_path, *FAST,
    ]  # fmt: skip
    assert _cli(*argv) == 0
    for method in ("abmil", "mhim_abmil"):
        summary = json.loads((tmp_path / method / "summary.json").read_text())
        assert summary["method"] == method and summary["folds"] == [0, 1]
    teacher = json.loads((tmp_path / "mhim_abmil" / "fold1" / "metrics.json").read_text())[
        "teacher"
    ]
    assert teacher == str(tmp_path / "abmil" / "fold1")
    (tmp_path / "mhim_abmil" / "fold1" / "metrics.json").unlink()  # as if killed before finishing
    with caplog.at_level(logging.INFO):
        assert _cli(*argv) == 0
    assert caplog.text.count("already complete") == 3
    assert (tmp_path / "mhim_abmil" / "fold1" / "metrics.json").exists()


def test_survival_through_the_commands(tmp_path):
    arrays, surv, slides, _ = survival_bags(n_cases=30, dim=8)
    features = write_features(tmp_path / "features", arrays, "h5")
    surv.to_csv(tmp_path / "survival.csv", index=False)
    slides.to_csv(tmp_path / "labels.csv", index=False)
    assert (
        _cli("splits", tmp_path / "survival.csv", "-o", tmp_path / "splits.csv", "--folds", 3) == 0
    )
    out = tmp_path / "fold0"
    assert _cli(
        "train", "--features", features, "--labels", tmp_path / "survival.csv",
        "--slides-table", tmp_path / "labels.csv", "--splits", tmp_path / "splits.csv", "--fold", 0,
        "--method", "abmil", "--task-type", "survival", "-o", out, *FAST,
    ) == 0  # fmt: skip
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == [
        "case_id", "slide_ids", "role", "time", "event", "bin", "risk",
        "survival_0", "survival_1", "survival_2", "survival_3",
    ]  # fmt: skip
    assert len(pred) == 30 and pred["slide_ids"].str.contains(";").sum() == 10  # 2-slide cases
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"c_index", "events", "cases"}
    meta = json.loads((out / "model.json").read_text())
    assert len(meta["task"]["bin_edges"]) == 5 and meta["n_outputs"] == 4
    assert _cli("evaluate", out, "-o", tmp_path / "summary.json") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["c_index"]["mean"] == pytest.approx(metrics["test"]["c_index"])
    assert _cli(
        "predict", "--model", out, "--features", features, "--slides-table", tmp_path / "labels.csv",
        "-o", tmp_path / "pred.csv",
    ) == 0  # fmt: skip
    new = pd.read_csv(tmp_path / "pred.csv").merge(pred, on="case_id", suffixes=("_new", ""))
    assert len(new) == 30
    np.testing.assert_allclose(new["risk_new"], new["risk"], atol=1e-5)


def test_methods_command_and_the_real_entry_point(tmp_path, capsys):
    from pipeline.mil.models import list_methods

    assert _cli("methods", "--names") == 0
    assert capsys.readouterr().out.split() == [m["name"] for m in list_methods()]
    assert _cli("methods") == 0
    table = capsys.readouterr().out
    assert "mhim_transmil  mhim      transmil" in table
    from pipeline.settings import MILSettings

    defaults = MILSettings.defaults()
    assert f"selection={defaults.selection}," in table  # the notes show the schema's defaults
    for word in ("inner_cv", "ensemble", "inner_cv_swa", "fixed", "cox", "nll", "below_reference"):
        assert word in table
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", str(tmp_path / "nofold"), "-o", "x.json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {tmp_path / 'nofold'}: no metrics.json: this fold has not finished training. "
        "Run (or re-run) `wsi-mil train` for it."
    ]
