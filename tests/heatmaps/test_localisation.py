"""Localisation AUC: patch tumour fractions against a brute-force level-0 count, AUC against pair counting."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.heatmaps.localisation import (
    localisation_auc,
    patch_tumour_fraction,
    read_tumour_mask,
    slide_localisation,
    summarise,
)


def _brute_fraction(mask, d, coords, size):
    full = np.repeat(np.repeat(mask, d, axis=0), d, axis=1)  # level-0 truth, pixel by pixel
    return np.array([full[y : y + size, x : x + size].mean() for x, y in coords])


def _pair_auc(scores, truth):
    pos, neg = scores[truth], scores[~truth]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_mask_reader_and_fractions(tiled_slide):
    mask, d = read_tumour_mask(tiled_slide["masks_json"], "H1")
    np.testing.assert_array_equal(mask, tiled_slide["truth"].tumor)
    assert d == tiled_slide["truth"].mask_downsample == 16
    coords = tiled_slide["coords"]
    np.testing.assert_allclose(
        patch_tumour_fraction(mask, d, coords, 256), _brute_fraction(mask, 16, coords, 256)
    )
    # patches that are not a whole number of mask pixels from the origin are measured exactly too
    shifted = coords[:20] + np.array([5, 11])
    np.testing.assert_allclose(
        patch_tumour_fraction(mask, d, shifted, 200),
        _brute_fraction(mask, 16, shifted, 200),
        atol=1e-9,
    )
    with pytest.raises(PipelineError, match="no tumour mask entry"):
        read_tumour_mask(tiled_slide["masks_json"], "H2")


def test_slide_auc(tiled_slide):
    mask, d = read_tumour_mask(tiled_slide["masks_json"], "H1")
    coords = tiled_slide["coords"]
    fraction = _brute_fraction(mask, 16, coords, 256)
    truth = fraction >= 0.5
    assert 0 < truth.sum() < len(truth)  # the fixture slide has tumour and normal patches
    noisy = fraction + np.random.default_rng(0).normal(0, 0.4, len(fraction))
    result = slide_localisation(noisy, coords, 256, mask, d)
    assert result["n_tumour"] == truth.sum() and result["n_patches"] == len(coords)
    assert result["auc"] == pytest.approx(_pair_auc(noisy, truth))
    assert slide_localisation(fraction, coords, 256, mask, d)["auc"] == 1.0
    assert slide_localisation(-fraction, coords, 256, mask, d)["auc"] == 0.0
    assert slide_localisation(noisy, coords, 256, np.zeros_like(mask), d)["auc"] is None


def test_summary_skips_undefined():
    assert summarise([0.9, None, 0.7, 0.8]) == {
        "n_slides": 3,
        "median": 0.8,
        "min": 0.7,
        "max": 0.9,
    }
    assert summarise([None])["median"] is None
    assert localisation_auc(np.array([0.1, 0.2]), np.array([True, True])) is None


def test_store_localisation(planted, tiled_slide):
    from pipeline.heatmaps.localisation import store_localisation

    mask, d = read_tumour_mask(tiled_slide["masks_json"], "H1")
    truth = _brute_fraction(mask, 16, tiled_slide["coords"], 256) >= 0.5
    result = store_localisation(planted["store"], tiled_slide["masks_json"], "other")
    assert result["slide_id"] == "H1" and result["method"] == "abmil" and result["score"] == "other"
    assert result["auc"] == pytest.approx(_pair_auc(-planted["scores"], truth))
