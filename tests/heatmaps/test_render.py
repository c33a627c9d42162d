"""Heatmap pictures and galleries on a planted bag: the top patch is drawn at its own coordinates in the top
colour, the galleries hold the right pixels (checked against an independent tiffslide read)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import tiffslide

from pipeline.errors import PipelineError
from pipeline.heatmaps.gallery import make_gallery
from pipeline.heatmaps.render import RenderOptions, colour_lut, render_heatmap
from pipeline.heatmaps.store import read_score_store, write_score_store
from pipeline.slides import open_slide

SIZE0 = 256  # level-0 patch side of the 0.5 um/px slide at target 0.5 um/px


def _independent_patch(path, x, y, size=SIZE0) -> np.ndarray:
    with tiffslide.TiffSlide(str(path)) as s:
        return np.asarray(s.read_region((x, y), 0, (size, size)).convert("RGB"))


def _patch_pixels(picture, x, y, k, inset=3):
    """The picture's pixels strictly inside the patch at level-0 (x, y) (``inset`` px from its edges)."""
    i0, i1 = int(np.ceil(y * k)) + inset, int((y + SIZE0) * k) - inset
    j0, j1 = int(np.ceil(x * k)) + inset, int((x + SIZE0) * k) - inset
    return picture.rgb[picture.top + i0 : picture.top + i1, picture.left + j0 : picture.left + j1]


def test_store_round_trip(planted, tiled_slide):
    store = read_score_store(planted["store"])
    np.testing.assert_array_equal(store.coords, tiled_slide["coords"])
    np.testing.assert_array_equal(store.scores["attention"], planted["scores"])
    assert store.attrs["slide_id"] == "H1" and store.attrs["method"] == "abmil"
    assert store.attrs["scores"] == ["attention", "other"]
    assert store.attrs["provenance"] == {"fold": 2, "model": "results/models/fold2/model.pt"}
    assert store.patch_size_level0 == SIZE0
    assert store.attrs["n_patches"] == len(tiled_slide["coords"])


def test_store_rejects_scores_of_another_bag(tiled_slide, tmp_path):
    coords = tiled_slide["coords"]
    with pytest.raises(PipelineError, match="one per patch"):
        write_score_store(
            tmp_path / "S.zarr",
            coords,
            {"attention": np.zeros(len(coords) - 1)},
            slide_id="S",
            method="abmil",
            tile_attrs=tiled_slide["tile_attrs"],
        )
    assert not (tmp_path / "S.zarr").exists()


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_top_patch_drawn_at_its_coordinates_in_top_colour(planted, tiled_slide, alpha):
    store = read_score_store(planted["store"])
    lut = colour_lut("jet")
    with open_slide(tiled_slide["path"]) as slide:
        pic = render_heatmap(slide, store, RenderOptions(alpha=alpha, contours=False))
        background = render_heatmap(slide, store, RenderOptions(alpha=0.0, contours=False))
    k = 2048 / 3072  # long side 3072 px -> 2048 px
    assert (pic.view.out_w, pic.view.out_h) == (2048, 1536)
    x, y = tiled_slide["coords"][planted["top"]]
    inside = _patch_pixels(pic, x, y, k).reshape(-1, 3).astype(int)
    base = _patch_pixels(background, x, y, k).reshape(-1, 3).astype(int)
    expected = np.round((1 - alpha) * base + alpha * lut[255].astype(int))
    assert np.abs(inside - expected).max() <= 1
    xl, yl = tiled_slide["coords"][planted["low"]]
    low = _patch_pixels(pic, xl, yl, k).reshape(-1, 3).astype(int)
    base_low = _patch_pixels(background, xl, yl, k).reshape(-1, 3).astype(int)
    assert np.abs(low - np.round((1 - alpha) * base_low + alpha * lut[0].astype(int))).max() <= 1
    # background outside every patch is the plain slide (no colour where there is no patch)
    assert pic.rgb.shape[0] == pic.top + 1536 and pic.rgb.shape[1] >= 2048


def test_region_at_level0_puts_the_patch_at_its_offset(planted, tiled_slide):
    store = read_score_store(planted["store"])
    x, y = (int(v) for v in tiled_slide["coords"][planted["top"]])
    rx, ry = max(0, x - 300), max(0, y - 200)
    opts = RenderOptions(alpha=1.0, level=0, region=(rx, ry, 900, 700), contours=False)
    with open_slide(tiled_slide["path"]) as slide:
        pic = render_heatmap(slide, store, opts)
    assert (pic.view.out_w, pic.view.out_h) == (900, 700)
    top_colour = colour_lut("jet")[255]
    patch = pic.rgb[pic.top + y - ry : pic.top + y - ry + SIZE0, x - rx : x - rx + SIZE0]
    assert (patch == top_colour).all()
    # the row just above and the column just left of the patch are not the top patch's colour
    assert not (pic.rgb[pic.top + y - ry - 1, x - rx : x - rx + SIZE0] == top_colour).all()
    assert not (
        pic.rgb[pic.top + y - ry : pic.top + y - ry + SIZE0, x - rx - 1] == top_colour
    ).all()


def test_contours_outline_the_tissue_not_the_colour_map(planted, tiled_slide):
    """Outlines come from the slide picture before blending: the same pixels whatever the scores,
    and none in a render of the same slide with contours off."""
    store = read_score_store(planted["store"])
    with open_slide(tiled_slide["path"]) as slide:
        a = render_heatmap(slide, store, RenderOptions(score="attention", alpha=1.0))
        b = render_heatmap(slide, store, RenderOptions(score="other", alpha=1.0))
        off = render_heatmap(
            slide, store, RenderOptions(score="attention", alpha=1.0, contours=False)
        )
    line_a = (a.rgb != off.rgb).any(-1)
    assert line_a.sum() > 100  # there is an outline
    assert ((b.rgb != render_heatmap_off(tiled_slide, store, "other")).any(-1) == line_a).all()


def render_heatmap_off(tiled_slide, store, score):
    with open_slide(tiled_slide["path"]) as slide:
        return render_heatmap(
            slide, store, RenderOptions(score=score, alpha=1.0, contours=False)
        ).rgb


def test_raw_normalisation_and_bad_options(planted, tiled_slide):
    store = read_score_store(planted["store"])
    with open_slide(tiled_slide["path"]) as slide:
        pic = render_heatmap(
            slide,
            store,
            RenderOptions(normalise="raw", vmin=0.0, vmax=1.0, alpha=1.0, contours=False),
        )
        x, y = tiled_slide["coords"][planted["low"]]  # -5 clips to the bottom colour
        assert (_patch_pixels(pic, x, y, 2048 / 3072) == colour_lut("jet")[0]).all()
        with pytest.raises(PipelineError, match="not inside"):
            render_heatmap(slide, store, RenderOptions(region=(3000, 0, 500, 500)))
        with pytest.raises(PipelineError, match="no score 'nope'"):
            render_heatmap(slide, store, RenderOptions(score="nope"))


def test_gallery_shows_the_extreme_patches(planted, tiled_slide):
    store = read_score_store(planted["store"])
    with open_slide(tiled_slide["path"]) as slide:
        gallery = make_gallery(slide, store, k=3)
    table = gallery.table
    assert list(table["kind"]) == ["top"] * 3 + ["bottom"] * 3
    scores = planted["scores"]
    assert table["index"].iloc[0] == planted["top"] and table["index"].iloc[3] == planted["low"]
    np.testing.assert_array_equal(table["index"].iloc[:3], np.argsort(-scores)[:3])
    np.testing.assert_array_equal(table["index"].iloc[3:], np.argsort(scores)[:3])
    np.testing.assert_allclose(table["score"], scores[table["index"]])
    for (_, row), (t, left, side) in zip(table.iterrows(), gallery.boxes, strict=True):
        assert (row.x, row.y) == tuple(tiled_slide["coords"][row["index"]])
        shown = gallery.rgb[t : t + side, left : left + side]
        np.testing.assert_array_equal(shown, _independent_patch(tiled_slide["path"], row.x, row.y))


def test_command_writes_heatmap_and_gallery(planted, tiled_slide, tmp_path):
    from pipeline.cli import main

    png, gal = tmp_path / "H1.png", tmp_path / "H1_gallery.png"
    args = [str(planted["store"]), "-o", str(png), "--gallery", str(gal), "-k", "4"]
    assert main(["heatmap", *args, "--cmap", "viridis", "--alpha", "0.7"]) == 0
    image = cv2.imread(str(png))
    assert image.shape[0] > 1536 and image.shape[1] > 2048
    table = pd.read_csv(gal.with_suffix(".csv"))
    assert len(table) == 8 and table["index"].iloc[0] == planted["top"]
    assert cv2.imread(str(gal)).shape[1] == 6 + 4 * (256 + 6)
    with pytest.raises(SystemExit):  # argparse refuses a malformed region
        main(["heatmap", *args[:3], "--region", "1,2,3"])
    assert main(["heatmap", *args[:3], "--score", "nope"]) == 1  # one clear error line, exit 1


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    from pipeline.heatmaps.render import average_ranks

    values = np.random.default_rng(1).integers(0, 20, 500).astype(float)  # many ties
    np.testing.assert_allclose(average_ranks(values), rankdata(values, method="average") - 1)


def test_model_to_picture(tiled_slide, tmp_path):
    """score_slide + draw_slide: a model's most attended patch is drawn in the top colour at its place."""
    import torch

    from pipeline.heatmaps.outputs import draw_slide, score_slide
    from pipeline.mil.models import create_mil_model
    from pipeline.mil.scores import instance_score_maps

    torch.manual_seed(0)
    coords = tiled_slide["coords"]
    model = create_mil_model("abmil", 8, 1, {"hidden_dim": 16, "attention_dim": 8})
    bag = torch.randn(len(coords), 8, generator=torch.Generator().manual_seed(1))
    store_path = score_slide(
        tmp_path / "H1.zarr",
        model,
        bag,
        coords,
        tiled_slide["tile_attrs"],
        slide_id="H1",
        method="abmil",
        label=1,
        provenance={"fold": 0},
    )
    store = read_score_store(store_path)
    expected = instance_score_maps(model, bag)["attention"]
    np.testing.assert_allclose(store.scores["attention"], expected)
    with torch.no_grad():
        p = torch.sigmoid(model.eval()(bag)["logits"]).item()
    assert store.attrs["prediction"] == pytest.approx(p, rel=1e-5)
    assert store.attrs["provenance"]["fold"] == 0
    png = tmp_path / "H1.png"
    options = RenderOptions(alpha=1.0, contours=False)
    draw_slide(store_path, png, tmp_path / "H1_gallery.png", options=options, k=2)
    rgb = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    with open_slide(tiled_slide["path"]) as slide:
        top = render_heatmap(slide, store, options).top
    x, y = coords[int(np.argmax(expected))]
    k = 2048 / 3072
    cy, cx = top + int((y + SIZE0 / 2) * k), int((x + SIZE0 / 2) * k)
    assert (rgb[cy - 5 : cy + 5, cx - 5 : cx + 5] == colour_lut("jet")[255]).all()
    table = pd.read_csv(tmp_path / "H1_gallery.csv")
    assert table["index"].iloc[0] == int(np.argmax(expected))
