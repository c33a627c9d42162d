"""The viewer and QuPath export in the shared tiny workflow run: a pyramid per slide bounded at
viewer.max_um_per_px, a GeoJSON per slide with the tile store's patches, and a page per slide of every
task with a heatmap layer per method and score, linked from the cohort index and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.heatmaps.store import read_score_store
from pipeline.layout import Layout, heatmap_files
from pipeline.store import read_array, read_attrs

pytestmark = pytest.mark.slow
METHODS = ["abmil", "mhim_abmil"]


@pytest.fixture(scope="module")
def run(e2e):
    config = yaml.safe_load((e2e / "config.yaml").read_text())
    return Layout(str(e2e / "results")), config


def _page_data(path: Path) -> dict:
    text = path.read_text()
    return json.loads(re.fullmatch(r"window\.WSI_MIL_SLIDE = (.*);\n", text, re.S).group(1))


def _slides(out: Layout, task: str, wf) -> list[str]:
    folder = Path(out.heatmap_dir(task, wf.ENCODER, METHODS[0]))
    return list(json.loads((folder / "index.json").read_text())["slides"])


def test_every_slide_has_a_bounded_pyramid(run, wf):
    out, config = run
    for slide in json.loads(Path(out.run_manifest).read_text())["slides"]:
        record = json.loads((Path(out.viewer_pyramid(slide)) / "pyramid.json").read_text())
        if slide == wf.BROKEN:
            assert record["failed"] is True and "not a readable" in record["error"]
            continue
        attrs = read_attrs(out.tiles(slide))
        assert [record["level0_width"], record["level0_height"]] == attrs["slide_size"]
        assert record["mpp"] >= min(1.0, attrs["slide_mpp"]) * 0.999  # default max_um_per_px
        assert record["mpp"] < 2.0 * max(1.0, attrs["slide_mpp"])  # and no coarser than needed
        tiles = list((Path(out.viewer_pyramid(slide)) / "tiles").rglob("*.jpg"))
        assert len(tiles) == record["n_tiles"]
        assert sorted({int(p.parent.name) for p in tiles}) == list(range(record["top_level"] + 1))


def test_pages_show_every_slide_with_each_methods_out_of_fold_scores(run, wf):
    out, config = run
    report = Path(out.report_html).read_text()
    for task in config["tasks"]:
        name = task["name"]
        folder = Path(out.viewer_dir(name))
        assert f'href="viewer/{name}/index.html"' in report
        index = (folder / "index.html").read_text()
        slides = _slides(out, name, wf)
        assert slides and wf.BROKEN not in slides
        for slide in slides:
            assert f'href="{slide}.html"' in index
            page = (folder / f"{slide}.html").read_text()
            assert f'src="../../slides/{slide}/pyramid.js"' in page
            data = _page_data(folder / f"{slide}.js")
            np_coords = read_array(out.tiles(slide), "coords")
            assert data["coords"] == np_coords.reshape(-1).tolist()
            for method in METHODS:
                store = read_score_store(
                    heatmap_files(out.heatmap_dir(name, wf.ENCODER, method), slide)["store"]
                )
                label = f"{wf.ENCODER}/{method}"
                ids = {layer["id"] for layer in data["layers"] if layer["method"] == label}
                assert ids == {f"{label}: {score}" for score in store.scores}
                assert data["predictions"][label] == store.attrs["prediction"]
                assert data["models"][label]["fold"] == store.attrs["provenance"]["fold"]
                assert data["models"][label]["role"] == "test"  # out of fold
            for group in data["topk"]:
                for item in group["items"]:
                    assert (folder / item["thumb"]).is_file()


def test_geojson_per_slide_has_the_tile_stores_patches(run, wf):
    out, config = run
    for task in config["tasks"]:
        for slide in _slides(out, task["name"], wf):
            collection = json.loads(
                (Path(out.geojson_dir(task["name"])) / f"{slide}.geojson").read_text()
            )
            tiles = [f for f in collection["features"] if f["properties"]["objectType"] == "tile"]
            coords = read_array(out.tiles(slide), "coords")
            assert [f["geometry"]["coordinates"][0][0] for f in tiles] == coords.tolist()
            names = set(tiles[0]["properties"]["measurements"])
            assert f"{wf.ENCODER}/abmil: attention" in names
