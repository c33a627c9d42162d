"""export-geojson: what QuPath gets is the tile store's patches, valid tissue polygons, the scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, shape

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.export.geojson import score_maps
from pipeline.heatmaps.store import read_score_store
from pipeline.tilestore import read_tiles


@pytest.fixture(scope="module")
def collection(scored_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("geojson")
    s = scored_slide
    args = ["export-geojson", str(s["tiles"]), "--heatmaps", str(s["heatmaps"]), "-k", "5"]
    assert main([*args, "-o", str(out)]) == 0
    return json.loads((out / "G1.geojson").read_text())


def _of(collection, kind, cls=None):
    return [
        f
        for f in collection["features"]
        if f["properties"]["objectType"] == kind
        and (cls is None or f["properties"].get("classification", {}).get("name") == cls)
    ]


def test_tiles_are_the_tile_stores_patches_with_every_score(scored_slide, collection):
    coords, side = scored_slide["coords"], int(scored_slide["attrs"]["level0_patch_size"])
    tiles = _of(collection, "tile")
    assert len(tiles) == len(coords) > 50
    got = np.array([shape(f["geometry"]).bounds for f in tiles])
    np.testing.assert_array_equal(got[:, :2], coords)
    np.testing.assert_array_equal(got[:, 2:] - got[:, :2], np.full((len(coords), 2), side))
    values = np.array([f["properties"]["measurements"]["enc/abmil: attention"] for f in tiles])
    np.testing.assert_allclose(values, scored_slide["attention"], rtol=1e-5)
    other = np.array([f["properties"]["measurements"]["enc/abmil: instance_prob"] for f in tiles])
    np.testing.assert_allclose(other, 1 - scored_slide["attention"], rtol=1e-5, atol=1e-6)


def test_top_patches_are_annotations_in_score_order(scored_slide, collection):
    top = _of(collection, "annotation", "Top patch")
    assert len(top) == 5
    best = np.argsort(-scored_slide["attention"], kind="stable")[:5]
    got = np.array([shape(f["geometry"]).bounds[:2] for f in top])
    np.testing.assert_array_equal(got, scored_slide["coords"][best])


def test_tissue_polygons_are_valid_and_match_the_mask_area(scored_slide, collection):
    tissue = [shape(f["geometry"]) for f in _of(collection, "annotation", "Tissue")]
    assert tissue and all(p.is_valid and p.geom_type == "Polygon" for p in tissue)
    mpp = float(scored_slide["attrs"]["slide_mpp"])
    area_mm2 = sum(p.area for p in tissue) * mpp * mpp / 1e6
    assert area_mm2 == pytest.approx(scored_slide["attrs"]["tissue_area_mm2"], rel=0.02)
    # every kept patch's centre lies on the tissue (min_tissue 0.5 of the same mask)
    side = int(scored_slide["attrs"]["level0_patch_size"])
    near = shapely.union_all(tissue).buffer(side / 2)
    centres = scored_slide["coords"] + side / 2
    assert all(near.contains(Point(*c)) for c in centres)


def test_scores_of_other_patches_are_refused(scored_slide, tmp_path):
    tiles = read_tiles(scored_slide["tiles"])
    store = read_score_store(scored_slide["heatmaps"] / "G1.zarr")
    store.coords = store.coords[:-1]
    with pytest.raises(PipelineError, match="differ from the tile store"):
        score_maps(tiles, [("enc/abmil", store)])
