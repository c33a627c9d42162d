"""A 100 000-patch score store renders in bounded memory and a few seconds.

The slide is a stub the size of a 100 000-patch resection (81 152 px square at 0.5 um/px, pyramid 1, 4,
16, 64x) whose reader returns flat tissue-coloured pixels and records every read, so the test also
proves level 0 is never read whole. Memory is measured with tracemalloc (numpy and OpenCV's numpy
outputs are traced). Bound: the picture is 2048 x 2048; painting holds a float64 sum and an int32
count of (2049 x 2049) (50 MB), the in-place cumulative sum may copy the sum once (34 MB), the slide
image, colour image and blend are 12.6 MB each, and the strips read from the slide are <= 2048 x 2048
RGB (12.6 MB): at most ~150 MB whatever the number of patches (measured: 89 MB). The test asserts
< 150 MB, and that 100 000 patches cost less than 24 MB more than 1 000 (their coordinates and per-patch
temporaries: ~1 MB of coordinates and a few [N] index arrays).
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.heatmaps.render import RenderOptions, render_heatmap
from pipeline.heatmaps.store import read_score_store, write_score_store
from pipeline.slides import Slide

SIDE, PATCH, MPP = 81152, 256, 0.5


class _FlatReader:
    """Stands in for OpenSlide: flat pink pixels of any requested size; remembers the largest read."""

    def __init__(self) -> None:
        self.largest = 0

    def read_region(self, location, level, size):
        self.largest = max(self.largest, size[0] * size[1])
        return np.full((size[1], size[0], 3), (230, 150, 190), np.uint8)

    def close(self) -> None:
        pass


def big_slide() -> Slide:
    downs = (1.0, 4.0, 16.0, 64.0)
    dims = tuple((int(SIDE // d), int(SIDE // d)) for d in downs)
    return Slide(Path("big.svs"), "stub", _FlatReader(), dims, downs, {})


def grid_store(path: Path, n: int) -> Path:
    """A score store of the first ``n`` patches of the slide's grid (row-major), random scores."""
    per_row = SIDE // PATCH
    idx = np.arange(n)
    coords = np.stack([(idx % per_row) * PATCH, (idx // per_row) * PATCH], 1).astype(np.int32)
    scores = np.random.default_rng(0).random(n).astype(np.float32)
    seg = {
        "seg_mpp": 8.0,
        "sthresh": 20,
        "use_otsu": False,
        "mthresh": 7,
        "close": 4,
        "min_tissue_area_um2": 20000,
        "min_hole_area_um2": 4000,
        "max_holes": 8,
        "threshold": 20.0,
    }
    tile_attrs = {
        "slide": "big.svs",
        "slide_size": [SIDE, SIDE],
        "slide_mpp": MPP,
        "target_mpp": MPP,
        "patch_size": PATCH,
        "level0_patch_size": PATCH,
        "read_level": 0,
        "read_size": PATCH,
        "segmentation": seg,
    }
    return write_score_store(
        path, coords, {"attention": scores}, slide_id="big", method="abmil", tile_attrs=tile_attrs
    )


def _render(store_path: Path) -> tuple[float, int, int, tuple]:
    slide = big_slide()
    store = read_score_store(store_path)
    tracemalloc.start()
    t0 = time.perf_counter()
    picture = render_heatmap(slide, store, RenderOptions())
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, slide.handle.largest, picture.rgb.shape


def test_100k_patches_render_in_bounded_memory_and_seconds(tmp_path):
    _render(grid_store(tmp_path / "warm.zarr", 10))  # imports and caches are not the renderer's
    small = _render(grid_store(tmp_path / "small.zarr", 1_000))
    seconds, peak, largest_read, shape = _render(grid_store(tmp_path / "big.zarr", 100_000))
    assert shape[0] >= 2048 and shape[1] >= 2048
    assert peak < 150 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert peak - small[1] < 24 * 2**20, f"{peak / 2**20:.0f} MB vs {small[1] / 2**20:.0f} MB"
    assert largest_read <= 2048 * 2048  # strips, never a whole level-0 (81 152^2 px) read
    assert seconds < 10.0, f"{seconds:.1f} s"
