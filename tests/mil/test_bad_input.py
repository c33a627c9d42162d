"""Bad input to the MIL commands never becomes a wrong answer (issue 16): NaN/Inf features, results of
other inputs or settings left in a `cv` folder, stale splits, a full disk, a damaged model file."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import checkpoints
from pipeline.cli import main
from pipeline.mil.data import FeatureBank

from .conftest import planted_bags, write_features

FAST = ["epochs=2", "patience=2", "hidden_dim=8"]
N_BAD = 3  # NaN rows planted in slide000; slide001 is Inf everywhere


@pytest.fixture(autouse=True, scope="module")
def _logging_outside_capsys():
    """The CLI's log handler keeps the stderr it was made with: make it before capsys swaps stderr,
    as other test modules expect (their capsys sees only the CLI's own lines)."""
    from pipeline.log import setup_logging

    setup_logging()


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    """Exit status and the error lines on stderr (in-process: an uncaught exception fails the test)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.splitlines()
    return code, [line for line in err if line.startswith("ERROR")]


def poisoned(dim: int = 8):
    arrays, labels = planted_bags(n_bags=24, dim=dim, n_min=8, n_max=16, seed=3)
    arrays["slide000"][:N_BAD] = np.nan
    arrays["slide001"][:] = np.inf
    return arrays, labels


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    arrays, labels = poisoned()
    write_features(root / "features", arrays)
    labels.to_csv(root / "labels.csv", index=False)
    return root, arrays


@pytest.mark.parametrize("fmt", ["zarr", "h5", "pt"])
def test_every_loader_drops_non_finite_patches_naming_the_slide(fmt, tmp_path, caplog):
    arrays, _ = poisoned()
    folder = write_features(tmp_path / fmt, arrays, fmt)
    suffix = {"zarr": ".zarr", "h5": ".h5", "pt": ".pt"}[fmt]
    with caplog.at_level(logging.WARNING):
        bank = FeatureBank.load(folder, ["slide000", "slide001", "slide002"])
    n0, n1 = len(arrays["slide000"]), len(arrays["slide001"])
    assert [r.getMessage() for r in caplog.records] == [
        f"slide slide000: {N_BAD} patch(es) with NaN/Inf features in {folder / ('slide000' + suffix)}; "
        f"dropped, {n0 - N_BAD} kept",
        f"slide slide001: {n1} patch(es) with NaN/Inf features in {folder / ('slide001' + suffix)}; "
        "left out",
    ]
    kept = bank.get("slide000").float().numpy()
    np.testing.assert_allclose(kept, arrays["slide000"][N_BAD:], rtol=1e-3, atol=5e-3)
    assert bank.empty == ["slide001"] and bank.slides == ["slide000", "slide002"]


def test_train_and_predict_never_score_from_nan(cohort, tmp_path, capsys):
    """Training runs on the finite patches; predict writes no label without a score."""
    root, arrays = cohort
    assert (
        _cli(capsys, "splits", root / "labels.csv", "-o", tmp_path / "s.csv", "--folds", 2)[0] == 0
    )
    fold = tmp_path / "fold0"
    code, lines = _cli(
        capsys, "train", "--features", root / "features", "--labels", root / "labels.csv",
        "--splits", tmp_path / "s.csv", "--fold", 0, "--method", "abmil", "-o", fold, *FAST,
    )  # fmt: skip
    assert (code, lines) == (0, [])
    metrics = json.loads((fold / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in metrics["test"].values())
    assert metrics["data"]["empty_slides"] == ["slide001"]
    history = pd.read_csv(fold / "history.csv")
    assert np.isfinite(history["train_loss"]).all()

    out = tmp_path / "pred.csv"
    code, lines = _cli(
        capsys, "predict", "--model", fold, "--features", root / "features", "-o", out
    )
    assert (code, lines) == (0, [])
    pred = pd.read_csv(out)
    assert set(pred.slide_id) == set(arrays) - {"slide001"}  # nothing to score: no row
    assert pred[["score_0", "score_1"]].notna().all().all() and pred.prediction.notna().all()

    # a model that gives NaN (damaged weights): one line, exit 1, no predictions file
    state = torch.load(fold / "model.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) for k, v in state.items()}, fold / "model.pt")
    bad_out = tmp_path / "bad.csv"
    code, lines = _cli(
        capsys, "predict", "--model", fold, "--features", root / "features", "-o", bad_out
    )
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"ERROR {fold}: the model gave NaN/Inf scores for 23 bag(s) (")
    assert lines[0].endswith(
        "No predictions were written; check that model and features are intact."
    )
    assert not bad_out.exists()


def test_cv_refuses_results_of_other_inputs_or_settings(cohort, tmp_path, capsys):
    root, _ = cohort
    labels = tmp_path / "labels.csv"
    labels.write_bytes((root / "labels.csv").read_bytes())
    out = tmp_path / "cv"

    def cv(*extra):
        return _cli(
            capsys, "cv", "--features", root / "features", "--labels", labels, "--method",
            "abmil", "-o", out, *extra,
        )  # fmt: skip

    assert cv("--folds", 2, *FAST) == (0, [])
    summary = out / "abmil" / "summary.json"
    assert cv("--folds", 2, *FAST) == (0, [])  # the same run again: everything is reused
    before = summary.stat().st_mtime_ns
    again = f"Use a new --output folder, or delete {out} to start over."

    assert cv("--folds", 3, *FAST) == (
        1,
        [f"ERROR {out / 'splits.csv'}: was made from other inputs or settings (folds 2 → 3) "
         f"and would be reused. {again}"],
    )  # fmt: skip
    assert cv("--folds", 2, "epochs=3", "patience=2", "hidden_dim=8") == (
        1,
        [f"ERROR {out / 'abmil'}: was made from other inputs or settings (mil.epochs 2 → 3) "
         f"and would be reused. {again}"],
    )  # fmt: skip
    table = pd.read_csv(labels)
    table.loc[table.slide_id == "slide002", "label"] = 1 - table.loc[2, "label"]  # a fixed label
    table.to_csv(labels, index=False)
    assert cv("--folds", 2, *FAST) == (
        1,
        [f"ERROR {out / 'splits.csv'}: was made from other inputs or settings "
         f"(tables.labels changed) and would be reused. {again}"],
    )  # fmt: skip
    assert summary.stat().st_mtime_ns == before  # the old result was not reported again

    os.remove(out / "splits.csv.made-from.json")  # a folder from before the records
    assert cv("--folds", 2, *FAST) == (
        1,
        [f"ERROR {out / 'splits.csv'}: exists, with no record of the inputs and settings it "
         f"was made from. {again}"],
    )  # fmt: skip


def test_train_with_stale_splits_is_one_line(cohort, tmp_path, capsys):
    root, _ = cohort
    table = pd.read_csv(root / "labels.csv")
    table.iloc[:12].to_csv(
        tmp_path / "old.csv", index=False
    )  # the splits' table had half the cases
    assert (
        _cli(
            capsys,
            "splits",
            tmp_path / "old.csv",
            "-o",
            tmp_path / "s.csv",
            "--folds",
            2,
            "--selection",
            "holdout",
        )[0]
        == 0
    )
    code, lines = _cli(
        capsys, "train", "--features", root / "features", "--labels", root / "labels.csv",
        "--splits", tmp_path / "s.csv", "--fold", 0, "--method", "abmil", "-o", tmp_path / "f",
        *FAST,
    )  # fmt: skip
    missing = sorted(set(table.case_id[12:]) - set(table.case_id[:12]))
    assert code == 1 and lines == [
        f"ERROR splits: {len(missing)} case(s) of the table are not in the splits file "
        f"({', '.join(missing[:3])}, ...): it was made from another table. "
        "Make the splits again from this table (`wsi-mil splits`)."
    ]
    assert not (tmp_path / "f" / "metrics.json").exists()


def test_full_disk_while_saving_the_model_is_one_line(cohort, tmp_path, capsys, monkeypatch):
    root, _ = cohort
    assert (
        _cli(capsys, "splits", root / "labels.csv", "-o", tmp_path / "s.csv", "--folds", 2)[0] == 0
    )

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04")  # the start of the zip reached the disk
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 1280 vs 1174"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(checkpoints, "_free_bytes", lambda folder: 0)
    fold = tmp_path / "fold0"
    code, lines = _cli(
        capsys, "train", "--features", root / "features", "--labels", root / "labels.csv",
        "--splits", tmp_path / "s.csv", "--fold", 0, "--method", "abmil", "-o", fold, *FAST,
    )  # fmt: skip
    assert code == 1 and lines == [
        f"ERROR {fold / 'model.pt'}: could not be written (the disk is full: 0.0 MiB free there; "
        "PyTorch said: [enforce fail at inline_container.cc:672] . unexpected pos 1280 vs 1174). "
        "Free space there (df -h) or write the results elsewhere, then re-run."
    ]
    assert sorted(p.name for p in fold.iterdir()) == []  # no model, no metrics, no temporary


def test_damaged_model_file_never_suggests_unsafe_loading(cohort, tmp_path, capsys):
    root, _ = cohort
    assert (
        _cli(capsys, "splits", root / "labels.csv", "-o", tmp_path / "s.csv", "--folds", 2)[0] == 0
    )
    fold = tmp_path / "fold0"
    code, _ = _cli(
        capsys, "train", "--features", root / "features", "--labels", root / "labels.csv",
        "--splits", tmp_path / "s.csv", "--fold", 0, "--method", "abmil", "-o", fold, "epochs=1",
        "hidden_dim=8",
    )  # fmt: skip
    assert code == 0
    (fold / "model.pt").write_bytes(bytes(range(256)) * 8)  # damaged
    code, lines = _cli(
        capsys,
        "predict",
        "--model",
        fold,
        "--features",
        root / "features",
        "-o",
        tmp_path / "p.csv",
    )
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(
        f"ERROR {fold / 'model.pt'}: cannot read model weights (not a PyTorch tensor file: "
    ) and lines[0].endswith("). Re-train this fold.")
    assert "weights_only" not in lines[0] and not (tmp_path / "p.csv").exists()
