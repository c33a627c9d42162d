"""Viewer pages without a browser: the external cohort's slides are labelled as such, predictions and
errors in the cohort index come from the score stores, and scores of other patches are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heatmaps.store import read_score_store, write_score_store
from pipeline.store import write_json
from pipeline.viewer.data import Method, prediction_error
from pipeline.viewer.pages import PageJob, write_pages


def test_error_is_the_distance_from_the_truth():
    binary = {"type": "classification", "classes": ["normal", "tumor"]}
    assert prediction_error(binary, "tumor", 0.9) == pytest.approx(0.1)
    assert prediction_error(binary, "normal", 0.9) == pytest.approx(0.9)
    three = {"type": "classification", "classes": ["a", "b", "c"]}
    assert prediction_error(three, "b", [0.2, 0.7, 0.1]) == pytest.approx(0.3)
    assert prediction_error({"type": "survival"}, "time 3, event 1", 0.4) is None
    assert prediction_error(binary, None, 0.4) is None


def _job(scored_slide, tmp_path, folder, cohort):
    write_json(folder / "index.json", {"slides": {"G1": {}}})
    return PageJob(
        task="tumour",
        methods=[Method(folder, cohort)],
        tiles_dir=scored_slide["tiles"].parent,
        geojson_dir=tmp_path / "no-geojson",
        pyramids_dir=tmp_path / "report" / "slides",
        outdir=tmp_path / "report" / "viewer" / "tumour",
        k=0,
    )


def test_external_slide_page_and_index(scored_slide, tmp_path):
    folder = tmp_path / "heatmaps_external" / "tumour" / "enc" / "abmil"
    shutil.copytree(scored_slide["heatmaps"] / "G1.zarr", folder / "G1.zarr")
    write_pages(_job(scored_slide, tmp_path, folder, "external"))
    out = tmp_path / "report" / "viewer" / "tumour"
    text = (out / "G1.js").read_text()
    data = json.loads(text.removeprefix("window.WSI_MIL_SLIDE = ").removesuffix(";\n"))
    assert data["cohort"] == "external" and data["pyramid"] == "../../slides/G1"
    assert data["predictions"] == {"enc/abmil": 0.9}
    np.testing.assert_allclose(data["layers"][0]["raw"], scored_slide["attention"], rtol=1e-4)
    assert "external prediction" in (out / "G1.html").read_text()
    index = (out / "index.html").read_text()
    assert '<a href="G1.html">G1</a></td><td>external</td>' in index


def test_scores_of_other_patches_are_refused_and_nothing_is_written(scored_slide, tmp_path):
    folder = tmp_path / "heatmaps" / "tumour" / "enc" / "abmil"
    store = read_score_store(scored_slide["heatmaps"] / "G1.zarr")
    write_score_store(
        folder / "G1.zarr",
        store.coords[:-1],
        {k: v[:-1] for k, v in store.scores.items()},
        slide_id="G1",
        method="abmil",
        tile_attrs=store.tiles,
    )
    with pytest.raises(PipelineError, match="differ from the tile store"):
        write_pages(_job(scored_slide, tmp_path, folder, "cv"))
    assert not (tmp_path / "report" / "viewer" / "tumour").exists()
