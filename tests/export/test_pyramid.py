"""The viewer's pyramid: levels stop at viewer.max_um_per_px, tiles are openslide's Deep Zoom tiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.viewer.pyramid import PyramidOptions, top_level, write_pyramid


@pytest.mark.parametrize(
    ("slide_mpp", "bound", "halvings"),
    [(0.25, 1.0, 2), (0.5, 1.0, 1), (0.3, 1.0, 2), (0.26, 1.0, 2), (1.0, 1.0, 0), (2.0, 1.0, 0),
     (0.25, 0.0, 0), (0.25, 4.0, 4)],
)  # fmt: skip
def test_finest_level_is_the_first_at_least_as_coarse_as_the_bound(slide_mpp, bound, halvings):
    assert top_level(17, slide_mpp, bound) == 16 - halvings
    if bound and slide_mpp < bound:
        finest = slide_mpp * 2**halvings
        assert finest >= bound * 0.999 and finest / 2 < bound


def test_pyramid_tiles_are_the_deep_zoom_generators(scored_slide, tmp_path):
    from openslide import OpenSlide
    from openslide.deepzoom import DeepZoomGenerator

    out = tmp_path / "G1"
    record = write_pyramid(
        scored_slide["path"],
        out,
        slide_mpp=0.5,
        slide_id="G1",
        options=PyramidOptions(format="png"),
    )
    assert record["mpp"] == pytest.approx(1.0) and (record["width"], record["height"]) == (
        1536,
        1152,
    )
    assert json.loads((out / "pyramid.json").read_text())["n_tiles"] == record["n_tiles"]
    dz = DeepZoomGenerator(OpenSlide(str(scored_slide["path"])), 254, 1, limit_bounds=False)
    top = record["top_level"]
    assert top == dz.level_count - 2  # one halving: 0.5 -> 1.0 µm/px
    assert not (out / "tiles" / str(top + 1)).exists()
    cols, rows = dz.level_tiles[top]
    assert len(list((out / "tiles" / str(top)).glob("*.png"))) == cols * rows
    tile = np.asarray(Image.open(out / "tiles" / str(top) / f"{cols - 1}_{rows - 1}.png"))
    np.testing.assert_array_equal(tile, np.asarray(dz.get_tile(top, (cols - 1, rows - 1))))


def test_a_changed_slide_is_refused_and_nothing_is_written(scored_slide, tmp_path):
    with pytest.raises(PipelineError, match="changed since tiling"):
        write_pyramid(
            scored_slide["path"], tmp_path / "G1", slide_mpp=0.5, slide_id="G1",
            options=PyramidOptions(), expect_size=[100, 100],
        )  # fmt: skip
    assert not (tmp_path / "G1").exists()


def test_a_level_whose_size_was_rounded_still_serves_its_downsample():
    from types import SimpleNamespace

    from pipeline.viewer.pyramid import _Levels

    # 5380 x 3751 stored at 1345 x 937 and 336 x 234: OpenSlide's downsamples 4.0016 and 16.03
    handle = SimpleNamespace(
        level_downsamples=(1.0, (4.0 + 3751 / 937) / 2, (5380 / 336 + 3751 / 234) / 2)
    )
    levels = _Levels(handle)
    assert [levels.get_best_level_for_downsample(d) for d in (1, 2, 3.9, 4, 8, 16, 64)] == [
        0, 0, 0, 1, 1, 2, 2,
    ]  # fmt: skip
    assert levels.level_downsamples is handle.level_downsamples  # everything else passes through
