"""The HTML report and summary table, built from hand-made outputs with known values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.report import collect, plots
from pipeline.store import write_store

ENC = "efficientnet_lite0"


def _png(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (600, 400), colour).save(path)


def _bench(path: Path, seconds: float, rss: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t0\t{seconds}\n"
    )


def _fold(outdir: Path, fold: int, pred: pd.DataFrame, test_metrics: dict) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    pred.to_csv(outdir / "predictions.csv", index=False)
    (outdir / "metrics.json").write_text(json.dumps({"fold": fold, "test": test_metrics}))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results folder as the workflow lays it out: 3 slides (ok, failed, no tissue), 2 tasks."""
    root = tmp_path_factory.mktemp("results")
    error = "ERROR data/slides/s1.svs: not a readable slide (unsupported or corrupt file). Check the file."
    tiles = {
        "s0": (
            {
                "failed": False,
                "n_patches": 10,
                "tissue_area_mm2": 1.5,
                "slide_mpp": 0.25,
                "mpp_source": "aperio.MPP",
                "read_level": 0,
            },
            10,
        ),
        "s1": ({"failed": True, "error": error}, 0),
        "s2": (
            {
                "failed": False,
                "n_patches": 0,
                "tissue_area_mm2": 0.0,
                "slide_mpp": 0.5,
                "mpp_source": "openslide.mpp-x",
                "read_level": 0,
            },
            0,
        ),
    }
    for sid, (attrs, n) in tiles.items():
        write_store(root / "tiles" / f"{sid}.zarr", {"coords": np.zeros((n, 2), np.int32)}, attrs)
        write_store(
            root / "features" / ENC / f"{sid}.zarr",
            {"features": np.zeros((n, 1280), np.float16), "coords": np.zeros((n, 2), np.int32)},
            {"failed": attrs["failed"]},
        )
        _png(root / "qc" / f"{sid}.png", (200, 100, 100))
        _bench(root / "benchmarks" / "tile" / f"{sid}.tsv", 2.0 + int(sid[1]), 100.0)
        _bench(root / "benchmarks" / "extract" / ENC / f"{sid}.tsv", 10.0, 900.0)
    rng = np.random.default_rng(0)
    rows = []
    for task, ttype in (("diag", "classification"), ("surv", "survival")):
        base = root / "mil" / task / ENC / "abmil"
        for fold in (0, 1):
            roles = ["train"] * 8 + ["test"] * 8
            if ttype == "survival":
                pred = pd.DataFrame(
                    {
                        "case_id": [f"c{i}" for i in range(16)],
                        "role": roles,
                        "time": rng.uniform(1, 50, 16),
                        "event": rng.integers(0, 2, 16),
                        "risk": rng.normal(size=16),
                    }
                )
                _fold(base / f"fold{fold}", fold, pred, {"c_index": 0.6 + 0.1 * fold})
            else:
                score = rng.uniform(size=16)
                pred = pd.DataFrame(
                    {
                        "slide_id": [f"x{i}" for i in range(16)],
                        "case_id": [f"c{i}" for i in range(16)],
                        "role": roles,
                        "label": ["normal", "tumor"] * 8,
                        "score_normal": 1 - score,
                        "score_tumor": score,
                    }
                )
                _fold(base / f"fold{fold}", fold, pred, {"auc": 0.7 + 0.1 * fold})
        (base / "summary.json").write_text(json.dumps({"folds": [0, 1], "method": "abmil"}))
        row = {
            "task": task,
            "encoder": ENC,
            "method": "abmil",
            "task_type": ttype,
            "protocol": "holdout",
            "optimistic": False,
            "n_folds": 2,
            "parameters": 123456,
            "train_seconds_per_epoch": 0.25,
        }
        if ttype == "survival":
            row.update(c_index_mean=0.65, c_index_std=0.05)
        else:
            row.update(auc_mean=0.75, auc_std=0.05, accuracy_mean=0.7, accuracy_std=0.1)
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "summary.csv", index=False)
    (root / "config.effective.yaml").write_text("results_dir: results\n")
    # left over from an earlier run with another slide: must not appear in this run's report
    write_store(
        root / "tiles" / "stale.zarr",
        {"coords": np.zeros((0, 2), np.int32)},
        {"failed": True, "error": "ERROR stale.svs: old"},
    )
    _png(root / "qc" / "stale.png", (0, 0, 0))
    _bench(root / "benchmarks" / "tile" / "stale.tsv", 99.0, 1.0)
    benchmarks = [f"benchmarks/tile/{s}.tsv" for s in tiles]
    benchmarks += [f"benchmarks/extract/{ENC}/{s}.tsv" for s in tiles]
    (root / "run.json").write_text(
        json.dumps({"slides": list(tiles), "encoders": [ENC], "benchmarks": benchmarks})
    )
    return root


def _run(results: Path) -> collect.RunInputs:
    return collect.RunInputs.read(results / "run.json")


@pytest.fixture(scope="module")
def page(results) -> str:
    assert main(["report", str(results)]) == 0
    return (results / "report" / "index.html").read_text()


def test_report_lists_metrics_per_task_encoder_method(page):
    assert "0.750 ± 0.050" in page  # AUC of diag/abmil
    assert "0.700 ± 0.100" in page  # accuracy
    assert "0.650 ± 0.050" in page  # C-index of surv/abmil
    results = page.split("<h2>Results</h2>")[1].split("<h2>")[0]
    assert results.count(f"<td>{ENC}</td><td>abmil</td>") == 2


def test_report_lists_failed_slide_with_reason_and_empty_slide(page):
    failed = page.split("<h2>Failed slides</h2>")[1].split("<h2>")[0]
    assert "s1" in failed and "not a readable slide (unsupported or corrupt file)" in failed
    assert "No tissue found" in failed and "s2" in failed
    assert "s0" not in failed


def test_report_has_qc_thumbnails_km_and_roc(page):
    assert page.count('src="data:image/jpeg;base64,') == 3  # one thumbnail per slide
    assert page.count('href="../qc/') == 3  # linked to the full QC picture
    assert page.count("<figcaption>Kaplan–Meier, high vs low predicted risk") == 1
    assert page.count("<figcaption>ROC curves per fold") == 1


def test_report_stage_times_come_from_benchmarks(results, page):
    times = collect.stage_times(results, _run(results).benchmarks)
    tile = times.set_index("stage").loc["tile"]
    assert tile["jobs"] == 3 and tile["total_s"] == pytest.approx(2 + 3 + 4)
    assert tile["slowest"] == "s2" and tile["max_rss_mb"] == 100
    assert list(times["stage"]) == ["tile", "extract"]  # pipeline order
    stages = page.split("<h2>Run time per stage</h2>")[1].split("<h2>")[0]
    assert re.search(r"<td>tile</td><td class=\"num\">3</td><td class=\"num\">9.0</td>", stages)


def test_slide_rows_read_tile_and_feature_stores(results):
    rows = {r.slide: r for r in collect.slides(results, _run(results))}
    assert rows["s0"].status == "ok" and rows["s0"].features[ENC] == "10 × 1280"
    assert rows["s1"].status == "failed" and rows["s1"].features[ENC] == "failed"
    assert rows["s2"].status == "no tissue"


def test_slide_failing_only_in_extraction_is_listed_as_failed(tmp_path):
    error = "ERROR s3.svs: cannot read pixels at (512, 0) level 0 with openslide. Re-copy it."
    write_store(
        tmp_path / "tiles" / "s3.zarr",
        {"coords": np.zeros((4, 2), np.int32)},
        {"failed": False, "n_patches": 4},
    )
    write_store(
        tmp_path / "features" / ENC / "s3.zarr",
        {"features": np.zeros((0, 1280), np.float16), "coords": np.zeros((0, 2), np.int32)},
        {"failed": True, "error": error},
    )
    (row,) = collect.slides(tmp_path, collect.RunInputs(["s3"], [ENC]))
    assert row.status == "failed" and row.features[ENC] == "failed"
    assert row.error == f"feature extraction ({ENC}): {error}"


def test_risk_groups_cut_at_training_median():
    pred = pd.DataFrame(
        {
            "role": ["train"] * 4 + ["test"] * 4,
            "risk": [0.0, 1.0, 2.0, 3.0, 1.4, 1.6, -5.0, 9.0],
            "time": [1.0] * 8,
            "event": [1] * 8,
        }
    )
    test, cut, source = plots.risk_groups(pred)
    assert cut == 1.5 and source == "training median"
    assert list(test["group"]) == ["low risk", "high risk", "low risk", "high risk"]


def test_report_without_summary_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "summary table not found" in capsys.readouterr().err


def test_report_shows_only_the_slides_of_the_current_run(results, page):
    """A tile store, QC picture and benchmark of an earlier run's slide lie in the same folder."""
    assert "stale" not in page
    slides = pd.read_csv(results / "report" / "slides.csv")
    assert list(slides["slide_id"]) == ["s0", "s1", "s2"]
    assert (
        collect.stage_times(results, _run(results).benchmarks)
        .set_index("stage")
        .loc["tile", "jobs"]
        == 3
    )


def test_report_of_explicit_slides_links_qc_pictures_url_encoded(tmp_path):
    odd = "a#1?x&y %z"
    for sid in (odd, "plain"):
        write_store(
            tmp_path / "tiles" / f"{sid}.zarr",
            {"coords": np.zeros((1, 2), np.int32)},
            {"failed": False, "n_patches": 1},
        )
        _png(tmp_path / "qc" / f"{sid}.png", (10, 200, 10))
    pd.DataFrame(columns=["task", "encoder", "method", "task_type"]).to_csv(
        tmp_path / "summary.csv", index=False
    )
    assert main(["report", str(tmp_path), "--slides", odd]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'href="../qc/a%231%3Fx%26y%20%25z.png"' in page
    assert "plain" not in page
    assert list(pd.read_csv(tmp_path / "report" / "slides.csv")["slide_id"]) == [odd]


def test_report_without_run_manifest_is_one_clear_error(tmp_path, capsys):
    pd.DataFrame(columns=["task"]).to_csv(tmp_path / "summary.csv", index=False)
    assert main(["report", str(tmp_path)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert err == [
        f"ERROR {tmp_path / 'run.json'}: run manifest not found. Run the workflow (it writes it), "
        "or pass --slides (and --encoders)."
    ]
