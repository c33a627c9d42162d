"""Tiling synthetic 40× and 20× slides whose tissue is known.

Reference: the truth's own tiling decision. Each grid patch's tissue fraction is measured on the
ground-truth mask (mask pixel (i, j) covers level-0 ``[j*d, (j+1)*d) × [i*d, (i+1)*d)``), and a patch is
tissue when that fraction ≥ ``min_tissue``. Recall and precision are by patch area (every patch has the
same area), pooled over two seeds per magnification.
"""

from __future__ import annotations

import cv2
import numpy as np
import openslide
import pytest

from pipeline.slides import PatchGeometry, open_slide, read_patch
from pipeline.store import read_array, read_attrs
from pipeline.tiling import grid_axes, tile_slide


def _truth_decision(truth, size, step, min_tissue):
    d = truth.mask_downsample
    xs, ys = grid_axes(truth.width, truth.height, size, step)
    k = size // d  # whole mask pixels per patch for these slides (512/32 at 40×, 256/16 at 20×)
    fraction = np.array(
        [[truth.tissue[y // d : y // d + k, x // d : x // d + k].mean() for x in xs] for y in ys]
    )
    return {
        (int(xs[c]), int(ys[r])) for r, c in zip(*np.nonzero(fraction >= min_tissue), strict=True)
    }


@pytest.mark.parametrize("mag", [40, 20])
def test_kept_patches_match_the_ground_truth(synthetic, tiling_cfg, mag):
    true_positive = kept_total = truth_total = 0
    for truth in synthetic[mag]:
        with open_slide(truth.path) as s:
            mpp = s.metadata_mpp()
            assert mpp == pytest.approx(truth.mpp)
            result = tile_slide(s, mpp, tiling_cfg, 0.1)
        size = result.geometry.level0_patch_size
        assert size == {40: 512, 20: 256}[mag]
        kept = {tuple(c) for c in result.coords.tolist()}
        truth_kept = _truth_decision(truth, size, result.step, tiling_cfg["min_tissue"])
        true_positive += len(kept & truth_kept)
        kept_total += len(kept)
        truth_total += len(truth_kept)
        # tissue area (mask minus holes) within 12 % of the truth
        assert result.tissue.area_mm2 == pytest.approx(truth.tissue_area_mm2, rel=0.12)
    recall, precision = true_positive / truth_total, true_positive / kept_total
    assert recall >= 0.95, f"recall {recall:.3f}"
    assert precision >= 0.90, f"precision {precision:.3f}"


def test_40x_patches_cover_512_level0_px_and_equal_an_independent_read(synthetic, cli, tmp_path):
    truth = synthetic[40][0]
    out = tmp_path / "s40.zarr"
    code, errors = cli("tile", truth.path, "-o", out, "--qc", tmp_path / "s40.png")
    assert code == 0 and errors == []
    coords, attrs = read_array(out, "coords"), read_attrs(out)
    assert attrs["level0_patch_size"] == 512 and attrs["step"] == 512
    assert attrs["patch_size"] == 256 and attrs["target_mpp"] == 0.5
    assert (coords % 512 == 0).all() and len(coords) > 0
    reference = openslide.OpenSlide(str(truth.path))
    level = attrs["read_level"]
    assert attrs["read_size"] * reference.level_downsamples[level] == pytest.approx(512)
    geometry = PatchGeometry(**{k: attrs[k] for k in PatchGeometry.__dataclass_fields__})
    rng = np.random.default_rng(0)
    with open_slide(truth.path) as s:
        for x, y in coords[rng.choice(len(coords), 5, replace=False)]:
            rs = attrs["read_size"]
            rgba = np.asarray(reference.read_region((int(x), int(y)), level, (rs, rs)))
            assert (rgba[..., 3] == 255).all()
            want = cv2.resize(rgba[..., :3], (256, 256), interpolation=cv2.INTER_AREA)
            got = read_patch(s, int(x), int(y), geometry)
            assert got.shape == (256, 256, 3) and got.dtype == np.uint8
            np.testing.assert_array_equal(got, want)
    reference.close()


def test_20x_patches_are_read_at_256_from_level0(synthetic, tiling_cfg):
    truth = synthetic[20][0]
    with open_slide(truth.path) as s:
        result = tile_slide(s, s.metadata_mpp(), tiling_cfg, 0.1)
    g = result.geometry
    assert (g.level0_patch_size, g.read_level, g.read_size) == (256, 0, 256)


def test_overlap_gives_a_finer_global_grid(synthetic, tiling_cfg):
    truth = synthetic[40][0]
    cfg = {**tiling_cfg, "overlap": 64}  # 64 px at 20× = 128 level-0 px at 40×
    with open_slide(truth.path) as s:
        plain = tile_slide(s, s.metadata_mpp(), tiling_cfg, 0.1)
        dense = tile_slide(s, s.metadata_mpp(), cfg, 0.1)
    assert dense.step == 384 and (dense.coords % 384 == 0).all()
    # same tissue, smaller step: about (512/384)² times as many patches
    ratio = len(dense.coords) / len(plain.coords)
    assert 1.4 < ratio < 2.2
