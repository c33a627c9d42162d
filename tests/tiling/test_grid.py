"""The patch grid and the tissue fraction per patch, checked against independent brute-force sums."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.slides import PatchGeometry
from pipeline.tiling import grid_axes, grid_step, tissue_fraction
from pipeline.tissue import TissueParams, filter_contours, render_mask


def _exact_fraction(mask, scale, x, y, size):
    """Covered fraction of one patch by summing the overlap of every mask pixel with it."""
    sx, sy = scale
    u0, u1, v0, v1 = x / sx, (x + size) / sx, y / sy, (y + size) / sy
    j = np.arange(mask.shape[1])
    i = np.arange(mask.shape[0])
    ox = np.clip(np.minimum(u1, j + 1) - np.maximum(u0, j), 0, None)
    oy = np.clip(np.minimum(v1, i + 1) - np.maximum(v0, i), 0, None)
    return float((mask * oy[:, None] * ox[None, :]).sum() / ((u1 - u0) * (v1 - v0)))


@pytest.mark.parametrize("step_ratio", [1.0, 0.75])
def test_tissue_fraction_is_exact_for_cells_that_are_not_whole_mask_pixels(step_ratio):
    rng = np.random.default_rng(3)
    mask = (rng.random((37, 53)) < 0.45).astype(np.uint8)
    width, height = 1999, 1409  # level-0 px: 37.7 and 38.1 px per mask pixel, not integers
    scale = (width / mask.shape[1], height / mask.shape[0])
    size = 173
    xs, ys = grid_axes(width, height, size, int(size * step_ratio))
    got = tissue_fraction(mask, scale, xs, ys, size)
    want = np.array([[_exact_fraction(mask, scale, x, y, size) for x in xs] for y in ys])
    assert got.shape == (len(ys), len(xs))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_grid_is_global_from_origin_and_inside_the_slide():
    xs, ys = grid_axes(1000, 700, 256, 200)
    assert xs.tolist() == [0, 200, 400, 600]  # 800 + 256 > 1000
    assert ys.tolist() == [0, 200, 400]
    assert grid_axes(100, 700, 256, 256)[0].size == 0  # narrower than one patch: no column


def test_overlap_shrinks_the_step_in_level0_pixels():
    geo40 = PatchGeometry(0.25, 0.5, 256, 512, 0, 512)
    assert grid_step(geo40, 0) == 512
    assert grid_step(geo40, 32) == 448  # 32 px at 0.5 µm/px = 64 level-0 px at 0.25 µm/px
    with pytest.raises(PipelineError, match="overlap"):
        grid_step(geo40, 256)


def _params(**kw):
    base = dict(
        seg_mpp=8.0,
        sthresh=20,
        use_otsu=False,
        mthresh=7,
        close=4,
        min_tissue_area_um2=20000,
        min_hole_area_um2=4000,
        max_holes=8,
        pen_colors=("blue", "green", "red", "black"),
        near_black=True,
    )
    return TissueParams(**{**base, **kw})


def test_area_filters_are_in_square_micrometres():
    binary = np.zeros((100, 100), np.uint8)
    binary[10:60, 10:60] = 255  # 50×50 px piece
    binary[20:30, 20:30] = 0  # 10×10 px hole
    binary[40:43, 40:43] = 0  # 3×3 px hole
    binary[80:84, 80:84] = 255  # 4×4 px speck
    # at 8 µm/px (64 µm² per px): the piece is ~0.16 mm², the speck 0.001 mm², the holes 5184 / 256 µm²
    pieces, holes = filter_contours(binary, 64.0, _params())
    assert len(pieces) == 1 and len(holes[0]) == 1
    mask = render_mask(binary.shape, pieces, holes)
    assert mask[25, 25] == 0  # big hole cut out
    assert mask[41, 41] == 1  # small hole counts as tissue
    assert mask[82, 82] == 0  # speck dropped
    # the cut keeps the hole's rim: inside the piece the rendered mask equals the thresholded one
    inside = np.zeros_like(mask, bool)
    inside[10:60, 10:60] = True
    inside[40:43, 40:43] = False
    np.testing.assert_array_equal(mask[inside], (binary[inside] > 0).astype(np.uint8))
    # the same pixels at 0.5 µm/px are 256× smaller in µm²: the piece falls under 20000 µm²
    assert filter_contours(binary, 0.25, _params())[0] == []
    # max_holes keeps the largest holes only
    one = filter_contours(binary, 64.0, _params(min_hole_area_um2=0, max_holes=1))[1][0]
    assert len(one) == 1 and cv_area(one[0]) == pytest.approx(cv_area(holes[0][0]))


def cv_area(contour):
    import cv2

    return cv2.contourArea(contour)
