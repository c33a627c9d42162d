"""The heatmaps stage in the shared tiny workflow run: a heatmap of every slide for every method in the
report, each scored out of fold, and AB-MIL's attention finding the tumour (issue 11)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
import yaml

from pipeline.heatmaps.store import read_score_store
from pipeline.layout import HEATMAP_INDEX, LOCALISATION_CSV, Layout, heatmap_files

pytestmark = pytest.mark.slow
METHODS = ["abmil", "mhim_abmil"]


@pytest.fixture(scope="module")
def run(e2e):
    config = yaml.safe_load((e2e / "config.yaml").read_text())
    return e2e / "results", config


def task_slides(results: Path, config: dict, task: dict, wf) -> dict[str, str]:
    """slide -> case of the task's slides that have features (the broken slide has none)."""
    table = task.get("slides_table", task["table"])
    labels = pd.read_csv(table, dtype=str)
    ok = labels[labels["slide_id"] != wf.BROKEN]
    return dict(zip(ok["slide_id"], ok["case_id"], strict=True))


def test_report_links_a_heatmap_of_every_slide_for_every_method(run, wf):
    results, config = run
    page = (results / "report" / "index.html").read_text()
    out = Layout(str(results))
    for task in config["tasks"]:
        for method in METHODS:
            folder = Path(out.heatmap_dir(task["name"], wf.ENCODER, method))
            for slide in task_slides(results, config, task, wf):
                png = heatmap_files(folder, slide)["png"]
                assert png.read_bytes().startswith(b"\x89PNG")
                link = quote(Path(os.path.relpath(png, results / "report")).as_posix())
                assert f'href="{link}"' in page, (task["name"], method, slide)
                assert f'alt="heatmap {method} {slide}"' in page


def test_every_store_was_scored_by_a_model_that_never_saw_its_slide(run, wf):
    """Provenance fold vs the task's splits file: the slide's case is in that fold's test part."""
    results, config = run
    out = Layout(str(results))
    for task in config["tasks"]:
        splits = pd.read_csv(out.splits(task["name"]), dtype={"case_id": str})
        roles = splits.set_index(["case_id", "fold"])["role"]
        for method in METHODS:
            folder = Path(out.heatmap_dir(task["name"], wf.ENCODER, method))
            index = json.loads((folder / HEATMAP_INDEX).read_text())
            slides = task_slides(results, config, task, wf)
            assert sorted(index["slides"]) == sorted(slides)
            for slide, case in slides.items():
                store = read_score_store(heatmap_files(folder, slide)["store"])
                fold = store.attrs["provenance"]["fold"]
                assert roles[(case, fold)] == "test"
                assert Path(store.attrs["provenance"]["model_dir"]).name == f"fold{fold}"
                assert isinstance(store.attrs["prediction"], float)  # P(positive) or risk
            if method.startswith("mhim"):
                assert {"attention", "instance_prob"} <= set(store.scores)


def test_abmil_attention_localises_the_tumour(run, wf):
    """Median per-slide AUC of AB-MIL's attention against the tumour masks >= 0.85 (positive slides);
    the report's localisation table says the same."""
    results, _ = run
    folder = Path(Layout(str(results)).heatmap_dir("tumour", wf.ENCODER, "abmil"))
    table = pd.read_csv(folder / LOCALISATION_CSV)
    attention = table[(table["score"] == "attention")].dropna(subset=["auc"])
    positives = table[(table["score"] == "attention") & (table["label"] == "tumor")]
    assert len(attention) == len(positives) > 0  # defined exactly on the slides with tumour
    assert attention["auc"].median() >= 0.85
    summary = pd.read_csv(results / "report" / LOCALISATION_CSV)
    row = summary[(summary["method"] == "abmil") & (summary["score"] == "attention")].iloc[0]
    assert row["median"] == pytest.approx(attention["auc"].median())
    assert row["n_slides"] == len(attention)


def test_snakemake_report_attaches_every_heatmap(run, wf, snakemake, tmp_path):
    """`snakemake --report` (zip form, to list its files) carries each slide's heatmap and gallery."""
    import zipfile

    results, config = run
    zipped = tmp_path / "report.zip"
    snakemake(results.parent, "--report", zipped)
    names = [Path(n).name for n in zipfile.ZipFile(zipped).namelist()]  # data/raw/<hash>/<file>
    expected: dict[str, int] = {}
    for task in config["tasks"]:
        for slide in task_slides(results, config, task, wf):
            expected[slide] = expected.get(slide, 0) + len(METHODS)
    for slide, n in expected.items():
        assert names.count(f"{slide}.png") == n + 1, slide  # + its QC picture
        assert names.count(f"{slide}_gallery.png") == n, slide
