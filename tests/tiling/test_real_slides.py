"""`wsi-mil tile` on real slides: a small biopsy, a JPEG 2000 frozen section, TIFF, DICOM and no-MPP files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.slides import PatchGeometry, open_slide, read_patch
from pipeline.store import read_array, read_attrs
from pipeline.tiling import grid_axes, tile_slide


def _geometry(attrs) -> PatchGeometry:
    return PatchGeometry(**{k: attrs[k] for k in PatchGeometry.__dataclass_fields__})


def _non_glass(rgb: np.ndarray) -> float:
    """Fraction of full-resolution pixels that are not bright, unstained glass."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return float(1 - ((hsv[..., 1] < 20) & (hsv[..., 2] > 200)).mean())


def _check_grid(coords, attrs):
    step, size = attrs["step"], attrs["level0_patch_size"]
    width, height = attrs["slide_size"]
    assert coords.dtype == np.int32 and coords.ndim == 2 and coords.shape[1] == 2
    assert (coords % step == 0).all()  # one global grid from (0, 0)
    assert len({tuple(c) for c in coords.tolist()}) == len(coords)
    assert (coords >= 0).all()
    assert (coords[:, 0] + size <= width).all() and (coords[:, 1] + size <= height).all()


def test_small_biopsy_patches_lie_on_tissue(cli, slides_dir, tmp_path):
    slide = slides_dir / "CMU-1-Small-Region.svs"
    out, qc = tmp_path / "cmu.zarr", tmp_path / "cmu.png"
    code, errors = cli("tile", slide, "-o", out, "--qc", qc)
    assert code == 0 and errors == []
    coords, attrs = read_array(out, "coords"), read_attrs(out)
    assert len(coords) > 0 and attrs["n_patches"] == len(coords)
    _check_grid(coords, attrs)
    assert attrs["slide_mpp"] == pytest.approx(0.499) and attrs["mpp_source"] == "metadata"
    assert attrs["level0_patch_size"] == 256 and attrs["read_level"] == 0
    assert attrs["reader"] == "openslide" and attrs["failed"] is False
    width, height = attrs["slide_size"]
    assert 0 < attrs["tissue_area_mm2"] < width * height * 0.499**2 / 1e6
    assert cv2.imread(str(qc)).shape[1] >= 1000  # small slide: QC near full resolution

    with open_slide(slide) as s:
        geometry = _geometry(attrs)
        kept = {tuple(c) for c in coords.tolist()}
        xs, ys = grid_axes(width, height, 256, 256)
        for y in ys:
            for x in xs:
                stained = _non_glass(read_patch(s, int(x), int(y), geometry))
                if (x, y) in kept:
                    assert stained >= 0.4, f"kept patch ({x}, {y}) is mostly glass"
                elif stained >= 0.9:
                    pytest.fail(f"patch ({x}, {y}) is {stained:.0%} tissue but was not kept")
        # the criterion separates: the slide's top-left corner is glass
        assert _non_glass(read_patch(s, 0, 0, geometry)) < 0.1


def test_clam_area_threshold_would_drop_the_biopsy(slides_dir, tiling_cfg):
    """CLAM's a_t=100 (in 512×512 level-0 patches) is 6.5 mm² at 0.5 µm/px: more than this biopsy."""
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as s:
        clam_um2 = 100 * 512 * 512 * 0.499**2
        ours = tile_slide(s, 0.499, tiling_cfg, 0.1)
        clam = tile_slide(s, 0.499, {**tiling_cfg, "min_tissue_area_um2": clam_um2}, 0.1)
    assert len(ours.coords) > 0 and len(clam.coords) == 0


def test_frozen_jpeg2000_slide_without_mpp(cli, slides_dir, tmp_path):
    slide = slides_dir / "tcga-cr-7395-01a-01-ts1.svs"
    out = tmp_path / "tcga.zarr"
    code, errors = cli("tile", slide, "-o", out)
    assert code == 1 and len(errors) == 1
    assert str(slide) in errors[0] and "MPP" in errors[0] and "--mpp" in errors[0]
    assert list(tmp_path.iterdir()) == []

    code, errors = cli("tile", slide, "-o", out, "--mpp", "0.25")
    assert code == 0 and errors == []
    coords, attrs = read_array(out, "coords"), read_attrs(out)
    assert len(coords) > 0
    _check_grid(coords, attrs)
    assert attrs["mpp_source"] == "override" and attrs["slide_mpp"] == 0.25
    # 40× → 512 level-0 px per patch, read from the 2× level (0.5 µm/px) at 256 px
    assert attrs["level0_patch_size"] == 512 and attrs["read_level"] == 1
    assert attrs["read_size"] == 256


def test_implausible_tiff_resolution_is_not_used_as_mpp(cli, slides_dir, tmp_path):
    slide = slides_dir / "openslide_boxes.tiff"
    with open_slide(slide) as s:
        assert float(s.properties["openslide.mpp-x"]) > 300  # 72 dpi-like header
        assert s.metadata_mpp() is None
    code, errors = cli("tile", slide, "-o", tmp_path / "b.zarr")
    assert code == 1 and len(errors) == 1 and "implausible" in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_dicom_opens_with_openslide(cli, slides_dir, tmp_path):
    slide = slides_dir / "dicom_boxes" / "boxes_0.dcm"
    with open_slide(slide) as s:
        assert s.reader == "openslide"
    code, errors = cli("tile", slide, "-o", tmp_path / "d.zarr", "--reader", "openslide")
    assert code == 0 and errors == []
    attrs = read_attrs(tmp_path / "d.zarr")
    assert attrs["reader"] == "openslide" and attrs["n_patches"] == 0  # 16×16 px: no whole patch


def test_plain_tiff_falls_back_to_tiffslide_and_no_tissue_is_not_a_failure(
    cli, slides_dir, tmp_path, caplog
):
    slide = slides_dir / "kidney-48-5.tif"
    with open_slide(slide) as s:
        assert s.reader == "tiffslide"
    out = tmp_path / "k.zarr"
    code, errors = cli("tile", slide, "-o", out, "--mpp", "0.5", "--record-failure")
    assert code == 0 and errors == []
    attrs = read_attrs(out)
    assert attrs["reader"] == "tiffslide" and attrs["failed"] is False
    assert attrs["n_patches"] == 0 and read_array(out, "coords").shape == (0, 2)
    assert any("empty tile store" in r.getMessage() for r in caplog.records)
