"""A tiled synthetic slide with its tumour mask, and a score store with one planted top patch."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.heatmaps.store import write_score_store
from pipeline.store import read_array, read_attrs


@pytest.fixture(scope="session")
def tiled_slide(tmp_path_factory) -> dict:
    """A 20x synthetic slide (3072 x 2304 px, 20 % tumour), its tile store and a cohort-style mask."""
    from pipeline.config import section
    from pipeline.slides import open_slide
    from pipeline.synth import write_synthetic_slide
    from pipeline.tiling import run_tiling

    root = tmp_path_factory.mktemp("heatmap_slide")
    path = root / "slides" / "H1.svs"
    path.parent.mkdir()
    truth = write_synthetic_slide(
        path, width=3072, height=2304, mpp=0.5, seed=3, tumor_fraction=0.25
    )
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "masks" / "H1_tumor.png"), truth.tumor.astype(np.uint8) * 255)
    masks_json = root / "masks" / "masks.json"
    masks_json.write_text(
        json.dumps(
            {
                "slides": {
                    "H1": {
                        "tumor_mask": "masks/H1_tumor.png",
                        "mask_downsample": truth.mask_downsample,
                    }
                }
            }
        )
    )
    tiles = root / "H1_tiles.zarr"
    with open_slide(path) as slide:
        run_tiling(slide, 0.5, "metadata", section(None, "tiling"), 0.1, tiles)
    return {
        "path": path,
        "tiles": tiles,
        "coords": read_array(tiles, "coords"),
        "tile_attrs": read_attrs(tiles),
        "masks_json": masks_json,
        "truth": truth,
    }


@pytest.fixture(scope="session")
def planted(tiled_slide, tmp_path_factory) -> dict:
    """Random scores with a planted maximum and minimum at chosen patches, written as a score store."""
    coords = tiled_slide["coords"]
    n = len(coords)
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.8, n).astype(np.float32)
    top, low = n // 3, (2 * n) // 3
    scores[top], scores[low] = 5.0, -5.0
    store = Path(tmp_path_factory.mktemp("scores")) / "H1.zarr"
    write_score_store(
        store,
        coords,
        {"attention": scores, "other": -scores},
        slide_id="H1",
        method="abmil",
        tile_attrs=tiled_slide["tile_attrs"],
        label=1,
        prediction=0.93,
        provenance={"fold": 2, "model": "results/models/fold2/model.pt"},
    )
    return {"store": store, "scores": scores, "top": top, "low": low}
