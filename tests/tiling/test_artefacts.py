"""Pen ink and near-black regions are cut out of the tissue mask and never become patches.

Reference: the synthetic slides' own truth. ``truth.tissue`` is the tissue (including tissue under ink),
``truth.ink`` the pen strokes and the dark border, both at ``mask_downsample`` level-0 px per mask pixel.
A kept patch is "ink only" when the truth says it is not tissue (fraction < ``min_tissue``) but ink lies
on it; recall is the truth's tissue patches (fraction ≥ ``min_tissue``) that were kept.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.slides import open_slide
from pipeline.store import read_attrs
from pipeline.tiling import grid_axes, tile_slide
from pipeline.tissue import TissueParams, artefact_masks

OFF = {"pen_colors": [], "near_black": False}


@pytest.fixture(scope="module")
def inked(tmp_path_factory):
    """Two 20× slides (3 × 2.4 mm): blue and green ink on one; red, black and a dark border on the other."""
    from pipeline.synth import write_synthetic_slide

    root = tmp_path_factory.mktemp("inked")
    specs = {"bg": (("blue", "green"), False, 4), "rkb": (("red", "black"), True, 5)}
    return {
        name: write_synthetic_slide(
            root / f"ink_{name}.svs",
            width=6000,
            height=4800,
            mpp=0.5,
            seed=seed,
            tumor_fraction=0.05,
            ink=ink,
            border=border,
        )  # fmt: skip
        for name, (ink, border, seed) in specs.items()
    }


def _score(truth, result, min_tissue):
    """(kept, ink-only kept, truth tissue patches, truth tissue patches kept) of one tiling."""
    d, size = truth.mask_downsample, result.geometry.level0_patch_size
    k = size // d

    def frac(mask, x, y):
        return mask[y // d : y // d + k, x // d : x // d + k].mean()

    xs, ys = grid_axes(truth.width, truth.height, size, result.step)
    tissue = {
        (x, y) for y in ys.tolist() for x in xs.tolist() if frac(truth.tissue, x, y) >= min_tissue
    }
    kept = {tuple(c) for c in result.coords.tolist()}
    ink_only = [c for c in kept if frac(truth.tissue, *c) < min_tissue and frac(truth.ink, *c) > 0]
    return len(kept), len(ink_only), len(tissue), len(kept & tissue)


def test_ink_and_border_patches_are_dropped_and_tissue_is_kept(inked, tiling_cfg):
    totals = {"on": np.zeros(4, int), "off": np.zeros(4, int)}
    for truth in inked.values():
        assert truth.ink.any() and (truth.ink & truth.tissue).any()  # on glass and across tissue
        assert (truth.ink & ~truth.tissue).any()
        with open_slide(truth.path) as s:
            for name, cfg in (("on", tiling_cfg), ("off", {**tiling_cfg, **OFF})):
                result = tile_slide(s, 0.5, cfg, 0.1)
                totals[name] += _score(truth, result, tiling_cfg["min_tissue"])
    kept, ink_only, tissue, hit = totals["on"]
    assert ink_only <= 0.01 * kept, f"{ink_only} ink-only patches of {kept}"
    assert hit / tissue >= 0.95, f"recall {hit / tissue:.3f}"
    # without the filters the same slides give many ink-only patches (the test can fail)
    kept_off, ink_only_off, _, hit_off = totals["off"]
    assert ink_only_off >= 0.05 * kept_off and hit_off >= hit


def test_each_rule_reports_its_area_and_can_be_switched_off(inked, tiling_cfg):
    truth = inked["rkb"]
    with open_slide(truth.path) as s:
        full = tile_slide(s, 0.5, tiling_cfg, 0.1)
        no_red = tile_slide(s, 0.5, {**tiling_cfg, "pen_colors": ["blue", "green", "black"]}, 0.1)
        no_dark = tile_slide(s, 0.5, {**tiling_cfg, "pen_colors": [], "near_black": False}, 0.1)
    areas = full.tissue.artefact_area_mm2
    assert areas["pen_red"] > 0.05 and areas["pen_black"] > 0.05 and areas["near_black"] > 0.05
    assert areas["pen_blue"] == 0 and areas["pen_green"] == 0  # no blue or green ink on this slide
    # the border band (3 % of the width, full height) is all gone; black marker is near-black too
    border_mm2 = 0.03 * truth.width * truth.height * truth.mpp**2 / 1e6
    assert border_mm2 <= areas["near_black"] <= border_mm2 + areas["pen_black"]
    assert "pen_red" not in no_red.tissue.artefact_area_mm2
    assert len(no_red.coords) > len(full.coords)  # the red stroke on the glass came back
    assert no_dark.tissue.artefact_area_mm2 == {"total": 0.0}
    assert _score(truth, no_dark, 0.5)[1] > _score(truth, no_red, 0.5)[1]


def test_tile_store_attrs_and_qc_picture_show_the_exclusions(inked, cli, tmp_path):
    truth = inked["bg"]
    out, qc = tmp_path / "ink.zarr", tmp_path / "ink.png"
    code, errors = cli("tile", truth.path, "-o", out, "--qc", qc)
    assert code == 0 and errors == []
    attrs = read_attrs(out)
    assert attrs["segmentation"]["pen_colors"] == ["blue", "green", "red", "black"]
    assert attrs["segmentation"]["near_black"] is True
    areas = attrs["artefact_area_mm2"]
    assert areas["pen_blue"] > 0.05 and areas["pen_green"] > 0.05
    assert areas["total"] >= max(areas["pen_blue"], areas["pen_green"])
    rgb = cv2.cvtColor(cv2.imread(str(qc)), cv2.COLOR_BGR2RGB).astype(int)
    magenta = (rgb[..., 0] > 230) & (rgb[..., 1] < 30) & (rgb[..., 2] > 230)
    assert magenta.sum() > 200  # the excluded areas are outlined


@pytest.mark.parametrize(
    ("rgb", "flagged"),
    [
        ((236, 168, 200), None),  # eosin-pink stroma
        ((150, 88, 160), None),  # tumour background
        ((52, 22, 98), None),  # dark haematoxylin nucleus
        ((90, 60, 130), None),  # violet, densely cellular
        ((200, 70, 90), None),  # blood / bright eosin
        ((229, 212, 222), None),  # frozen-section background
        ((43, 66, 180), {"pen_blue"}),
        ((38, 142, 81), {"pen_green"}),
        ((40, 120, 130), {"pen_green"}),  # teal marker
        ((195, 33, 43), {"pen_red"}),
        ((29, 29, 32), {"pen_black", "near_black"}),  # black marker is near-black too
        ((60, 58, 66), {"pen_black"}),  # a paler black marker
        ((8, 8, 10), {"pen_black", "near_black"}),
    ],
)
def test_colour_rules_separate_ink_from_stains(tiling_cfg, rgb, flagged):
    image = np.full((40, 40, 3), 242, np.uint8)
    image[10:30, 10:30] = rgb
    masks = artefact_masks(image, TissueParams.from_config(tiling_cfg), 8.0)
    assert {k for k, m in masks.items() if m[20, 20]} == (flagged or set())
    assert not any(m[0, 0] or m[39, 39] for m in masks.values())  # glass stays glass


def test_real_slides_keep_their_patches(slides_dir, tiling_cfg):
    """Real H&E (a skin biopsy with marking dye, a frozen section) loses at most a few percent."""
    for name, mpp in (("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.25)):
        with open_slide(slides_dir / name) as s:
            mpp = mpp or s.metadata_mpp()
            on = tile_slide(s, mpp, tiling_cfg, 0.1)
            off = tile_slide(s, mpp, {**tiling_cfg, **OFF}, 0.1)
        assert len(off.coords) > 20
        assert abs(len(on.coords) - len(off.coords)) <= max(1, 0.03 * len(off.coords)), name
        assert on.tissue.area_mm2 >= 0.97 * off.tissue.area_mm2, name
