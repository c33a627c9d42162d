"""A tiled synthetic slide (with its planted tumour) and a score store that follows the tumour."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.heatmaps.store import write_score_store
from pipeline.store import read_array, read_attrs


def tumour_fraction(truth, coords: np.ndarray, side: int) -> np.ndarray:
    """Fraction of each patch inside the planted tumour (from the synthetic truth mask)."""
    d = truth.mask_downsample
    out = np.empty(len(coords))
    for i, (x, y) in enumerate(coords):
        cell = truth.tumor[y // d : (y + side) // d, x // d : (x + side) // d]
        out[i] = cell.mean() if cell.size else 0.0
    return out


@pytest.fixture(scope="session")
def scored_slide(tmp_path_factory) -> dict:
    from pipeline.config import section
    from pipeline.slides import open_slide
    from pipeline.synth import write_synthetic_slide
    from pipeline.tiling import run_tiling

    root = tmp_path_factory.mktemp("export_slide")
    path = root / "slides" / "G1.svs"
    path.parent.mkdir()
    truth = write_synthetic_slide(
        path, width=3072, height=2304, mpp=0.5, seed=3, tumor_fraction=0.25
    )
    tiles = root / "tiles" / "G1.zarr"
    with open_slide(path) as slide:
        run_tiling(slide, 0.5, "metadata", section(None, "tiling"), 0.1, tiles)
    coords, attrs = read_array(tiles, "coords"), read_attrs(tiles)
    truth_score = tumour_fraction(truth, coords, int(attrs["level0_patch_size"]))
    rng = np.random.default_rng(0)
    attention = (truth_score + rng.uniform(0, 0.05, len(coords))).astype(np.float32)
    heatmaps = root / "heatmaps" / "tumour" / "enc" / "abmil"
    write_score_store(
        heatmaps / "G1.zarr",
        coords,
        {"attention": attention, "instance_prob": 1 - attention},
        slide_id="G1",
        method="abmil",
        tile_attrs=attrs,
        label=1,
        prediction=0.9,
        provenance={"fold": 2, "role": "test"},
    )
    return {
        "path": path,
        "tiles": tiles,
        "coords": coords,
        "attrs": attrs,
        "truth": truth,
        "heatmaps": heatmaps,
        "attention": attention,
        "truth_fraction": truth_score,
    }
