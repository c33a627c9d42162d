"""Slide opening, MPP resolution and patch geometry on real slides."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import openslide
import pytest

from pipeline.errors import PipelineError
from pipeline.slides import (
    open_slide,
    patch_geometry,
    read_at_mpp,
    read_patch,
    resolve_mpp,
    scale_factor,
)

SLIDES = Path(__file__).resolve().parents[1] / "data" / "slides"


@pytest.mark.parametrize(
    ("slide_mpp", "expected"),
    [(0.25, 2.0), (0.2527, 2.0), (0.499, 1.0), (0.46, 1.0), (0.125, 4.0), (0.3, 0.5 / 0.3)],
)
def test_scale_factor_snaps_to_magnification_within_tolerance(slide_mpp, expected):
    assert scale_factor(slide_mpp, 0.5, 0.1) == pytest.approx(expected)


def test_cmu_small_region_is_20x_read_at_level0():
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        mpp, source = resolve_mpp(slide)
        geometry = patch_geometry(slide, mpp, 0.5, 256, 0.1)
        assert (mpp, source, slide.reader) == (0.499, "metadata", "openslide")
        assert slide.objective_power() == 20
        assert (geometry.level0_patch_size, geometry.read_level, geometry.read_size) == (
            256,
            0,
            256,
        )
        patch = read_patch(slide, 1000, 1200, geometry)
    reference = np.asarray(
        openslide.OpenSlide(str(SLIDES / "CMU-1-Small-Region.svs")).read_region(
            (1000, 1200), 0, (256, 256)
        )
    )
    assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8
    assert np.array_equal(patch, reference[..., :3])


def test_40x_override_reads_the_coarser_level_and_covers_512_level0_px():
    with open_slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        with pytest.raises(PipelineError, match="no usable pixel size"):
            resolve_mpp(slide)
        mpp, source = resolve_mpp(slide, override=0.25)
        geometry = patch_geometry(slide, mpp, 0.5, 256, 0.1)
        assert source == "override"
        # level 1 has downsample 2.0005 (MPP ~0.5): read 256 px there, covering 512 level-0 px
        assert (geometry.level0_patch_size, geometry.read_level, geometry.read_size) == (
            512,
            1,
            256,
        )
        patch = read_patch(slide, 1024, 1024, geometry)
        direct = slide.read_region(1024, 1024, 1, (256, 256))
    assert np.array_equal(patch, direct)


def test_config_default_mpp_applies_only_without_metadata():
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        assert resolve_mpp(slide, default=0.25) == (0.499, "metadata")
    with open_slide(SLIDES / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        assert resolve_mpp(slide, default=0.25) == (0.25, "config default")
        with pytest.raises(PipelineError, match="outside the plausible"):
            resolve_mpp(slide, override=25)


def test_implausible_tiff_resolution_is_not_trusted():
    with open_slide(SLIDES / "openslide_boxes.tiff") as slide:
        assert slide.metadata_mpp() is None
        with pytest.raises(
            PipelineError, match=r"ignored implausible openslide.mpp-x=352.778 µm/px"
        ):
            resolve_mpp(slide)


def test_reader_fallback_and_forcing():
    with open_slide(SLIDES / "kidney-48-5.tif") as slide:  # OpenSlide refuses plain TIFFs
        assert slide.reader == "tiffslide"
    with open_slide(SLIDES / "CMU-1-Small-Region.svs", reader="tiffslide") as slide:
        assert slide.reader == "tiffslide" and slide.metadata_mpp() == 0.499
    with open_slide(SLIDES / "dicom_boxes" / "boxes_0.dcm") as slide:
        assert slide.reader == "openslide" and slide.metadata_mpp() == pytest.approx(0.499)
    with pytest.raises(PipelineError, match="tiffslide: not a TIFF"):
        open_slide(SLIDES / "dicom_boxes" / "boxes_0.dcm", reader="tiffslide")


def test_non_slide_file_gives_one_line_naming_both_readers(tmp_path):
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"not a slide" * 100)
    with pytest.raises(PipelineError) as err:
        open_slide(fake)
    line = err.value.line()
    assert "\n" not in line and line.startswith(
        f"ERROR {fake}: not a readable whole-slide image (openslide:"
    )
    assert "tiffslide:" in line


def test_low_resolution_read_in_strips_equals_whole_read():
    with open_slide(SLIDES / "CMU-1-Small-Region.svs") as slide:
        whole, mpp_whole = read_at_mpp(slide, 0.499, 8.0)
        strips, mpp_strips = read_at_mpp(slide, 0.499, 8.0, max_strip_px=700)
        full = slide.read_region(0, 0, 0, slide.dimensions)
    expected = cv2.resize(full, (whole.shape[1], whole.shape[0]), interpolation=cv2.INTER_AREA)
    assert whole.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8), 3)
    assert mpp_whole == mpp_strips == pytest.approx(8.0, rel=0.01)
    assert np.array_equal(whole, expected)
    # strip borders fall between output rows, so strip-wise area averaging differs only by rounding
    assert np.abs(strips.astype(int) - whole.astype(int)).mean() < 2.0
