"""The synthetic cohort: slides open like scanner files, and the ground truth matches the pixels."""

from __future__ import annotations

import hashlib
import json
import math

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
import tiffslide

from pipeline import synth
from pipeline.cli import main
from pipeline.synth import fields, writer
from pipeline.synth import painter as painter_mod

N_SLIDES = 6
SEED = 3
FRACTION_RANGE = (0.02, 0.10)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("cohort")
    info = synth.make_cohort(
        outdir, N_SLIDES, SEED, size_scale=0.5, tumor_fraction_range=FRACTION_RANGE
    )
    return outdir, info


def _is_background(rgb: np.ndarray) -> np.ndarray:
    """White/near-white and unsaturated, as a tissue detector would call background."""
    rgb = rgb.astype(int)
    return (rgb.min(-1) > 215) & (rgb.max(-1) - rgb.min(-1) < 20)


def _mask(outdir, slide, kind):
    return (
        cv2.imread(str(outdir / "masks" / f"{slide['slide_id']}_{kind}.png"), cv2.IMREAD_GRAYSCALE)
        > 0
    )


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_slides_open_in_openslide_and_tiffslide_with_written_metadata(cohort):
    outdir, info = cohort
    assert {s["appmag"] for s in info["slides"]} == {20, 40}
    for s in info["slides"]:
        path = outdir / s["path"]
        osl, tsl = openslide.OpenSlide(path), tiffslide.TiffSlide(path)
        dims = [tuple(d) for d in s["level_dimensions"]]
        assert osl.dimensions == (s["width"], s["height"])
        assert osl.level_dimensions == tsl.level_dimensions == tuple(dims)
        assert len(dims) >= 3 and max(dims[-1]) <= 512
        for k, down in enumerate(osl.level_downsamples):
            assert down == pytest.approx(4**k, rel=0.02)
        assert osl.properties["openslide.vendor"] == "aperio"
        assert float(osl.properties["openslide.mpp-x"]) == s["mpp"] == 10.0 / s["appmag"]
        assert float(osl.properties["aperio.MPP"]) == s["mpp"]
        assert int(osl.properties["openslide.objective-power"]) == s["appmag"]
        assert tsl.properties["tiffslide.mpp-x"] == pytest.approx(s["mpp"])
        assert int(tsl.properties["tiffslide.objective-power"]) == s["appmag"]
        assert "thumbnail" in osl.associated_images
        # both readers decode the same pixels
        region = ((s["width"] // 3, s["height"] // 3), 0, (300, 200))
        a = np.asarray(osl.read_region(*region).convert("RGB"))
        b = np.asarray(tsl.read_region(*region, as_array=True))[..., :3]
        np.testing.assert_array_equal(a, b)


def test_tissue_mask_matches_pixels_and_tumour_is_distinct(cohort):
    outdir, info = cohort
    for s in info["slides"]:
        tissue, tumor = _mask(outdir, s, "tissue"), _mask(outdir, s, "tumor")
        d = s["mask_downsample"]
        assert d * s["mpp"] == pytest.approx(s["mask_mpp"]) == 8.0
        assert tissue.shape == (math.ceil(s["height"] / d), math.ceil(s["width"] / d))
        assert tissue.shape == tuple(s["mask_shape"])
        # the level-0 pixel at the centre of each mask cell
        level0 = tiffslide.TiffSlide(outdir / s["path"]).read_region(
            (0, 0), 0, (s["width"], s["height"]), as_array=True
        )[..., :3]
        ii, jj = np.nonzero(np.ones_like(tissue))
        ys, xs = ii * d + d // 2, jj * d + d // 2
        inside = (ys < s["height"]) & (xs < s["width"])
        ii, jj, ys, xs = ii[inside], jj[inside], ys[inside], xs[inside]
        background = _is_background(level0[ys, xs])
        in_tissue = tissue[ii, jj]
        assert (~background[in_tissue]).mean() > 0.95, s["slide_id"]
        assert background[~in_tissue].mean() > 0.95, s["slide_id"]
        assert not (tumor & ~tissue).any()
        if tumor.any():
            # tumour: more haematoxylin (darker, bluer) than the surrounding tissue, at patch level
            pix = level0[ys, xs].astype(float)
            t, n = pix[tumor[ii, jj]], pix[in_tissue & ~tumor[ii, jj]]
            assert t.mean() < n.mean() - 40
            assert (t[:, 2] - t[:, 1]).mean() > (n[:, 2] - n[:, 1]).mean() + 10


def test_labels_survival_and_tumour_fractions(cohort):
    outdir, info = cohort
    labels = pd.read_csv(outdir / "labels.csv")
    assert list(labels.columns) == ["slide_id", "case_id", "label"]
    assert len(labels) == N_SLIDES == len(list((outdir / "slides").glob("*.svs")))
    assert set(labels.label) == {"normal", "tumor"}
    assert labels.groupby("case_id").label.nunique().max() == 1
    assert (labels.groupby("case_id").size() == 2).any()
    survival = pd.read_csv(outdir / "survival.csv")
    assert list(survival.columns) == ["case_id", "time", "event"]
    assert sorted(survival.case_id) == sorted(labels.case_id.unique())
    assert (survival.time > 0).all() and set(survival.event) <= {0, 1}
    assert (survival.event == 0).sum() == round(0.3 * len(survival))
    by_slide = {s["slide_id"]: s for s in info["slides"]}
    for row in labels.itertuples():
        s = by_slide[row.slide_id]
        tissue, tumor = _mask(outdir, s, "tissue"), _mask(outdir, s, "tumor")
        measured = tumor.sum() / tissue.sum()
        assert measured == pytest.approx(s["tumor_fraction"], abs=1e-5)
        if row.label == "tumor":
            lo, hi = FRACTION_RANGE
            assert lo - 1 / tissue.sum() <= measured <= hi + 1 / tissue.sum()
        else:
            assert measured == 0
    masks = json.loads((outdir / "masks" / "masks.json").read_text())
    assert set(masks["slides"]) == set(labels.slide_id)


def test_survival_time_shortens_with_tumour_burden():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    burden = {f"c{i}": float(b) for i, b in enumerate(rng.uniform(0, 0.1, 300))}
    table = synth.survival_table(burden, seed=1, censored_fraction=0.3)
    assert 1 - table.event.mean() == pytest.approx(0.3, abs=0.005)
    risk = np.array([burden[c] for c in table.case_id])
    # lifelines scores "higher predicts longer"; higher burden must predict shorter times
    assert concordance_index(table.time, -risk, table.event) > 0.7


def test_same_seed_gives_identical_files_and_pyramid_is_consistent(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "_MEMMAP_BYTES", 0)  # also cover the memory-mapped level path
    kwargs = dict(width=1100, height=777, mpp=0.5, seed=11, tumor_fraction=0.06)
    a = synth.write_synthetic_slide(tmp_path / "a" / "s.svs", **kwargs)
    b = synth.write_synthetic_slide(tmp_path / "b" / "s.svs", **kwargs)
    c = synth.write_synthetic_slide(tmp_path / "c" / "s.svs", **{**kwargs, "seed": 12})
    assert _sha(a.path) == _sha(b.path) != _sha(c.path)
    np.testing.assert_array_equal(a.tissue, b.tissue)
    np.testing.assert_array_equal(a.tumor, b.tumor)
    assert a.level_dimensions == [(1100, 777), (275, 194)]
    assert a.tumor_fraction == pytest.approx(0.06, abs=1 / a.tissue.sum())
    # every level is the 4x box-filtered level above it (up to JPEG error)
    slide = tiffslide.TiffSlide(a.path)
    level0 = slide.read_region((0, 0), 0, slide.level_dimensions[0], as_array=True)[..., :3]
    level1 = slide.read_region((0, 0), 1, slide.level_dimensions[1], as_array=True)[..., :3]
    expected = writer.downsample4(level0).astype(int)
    error = np.abs(level1 - expected).mean()
    shifted = np.abs(level1[:, 1:] - expected[:, :-1]).mean()  # one level-1 pixel off
    assert error < 5 and error < 0.6 * shifted
    assert list(tmp_path.glob("a/.*")) == []  # no temporary left behind


def test_region_painting_is_seamless_across_tiles():
    rng = np.random.default_rng(5)
    shape = (94, 125)
    tissue = fields.tissue_field(rng, shape, 8.0)
    layers = np.stack(
        [tissue, fields.tumor_field(rng, tissue, 0.08, 8.0), np.full(shape, 0.5, np.float32)]
    )
    painter = painter_mod.Painter(layers, 16, 0.5, 2000, 1500, rng, overhang=256)
    whole = painter.region(256, 256, 1024, 768)
    tiles = np.concatenate(
        [
            np.concatenate([painter.region(x, y, 256, 256) for x in range(256, 1280, 256)], 1)
            for y in range(256, 1024, 256)
        ]
    )
    np.testing.assert_array_equal(whole, tiles)
    np.testing.assert_array_equal(painter.region(300, 301, 77, 55), whole[45:100, 44:121])


def test_cli_writes_a_cohort_reuses_it_and_rejects_bad_arguments(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["synth", str(out), "--seed", "1", "--size-scale", "0.3"]
    assert main([*args, "--slides", "3"]) == 0
    cohort = json.loads((out / "cohort.json").read_text())
    assert len(cohort["slides"]) == 3 and cohort["params"]["seed"] == 1
    assert all((out / s["path"]).exists() for s in cohort["slides"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main([*args, "--slides", "3"]) == 0  # complete and same arguments: reused untouched
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    assert main([*args, "--slides", "2"]) == 0  # a smaller cohort leaves no stale slide behind
    assert len(list((out / "slides").glob("*.svs"))) == 2
    assert len(list((out / "masks").glob("*.png"))) == 4
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "bad"), "--slides", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR") and "at least 2 slides" in err[0]


def _level0(path) -> np.ndarray:
    slide = tiffslide.TiffSlide(path)
    return slide.read_region((0, 0), 0, slide.level_dimensions[0], as_array=True)[..., :3]


def _far_from(mask: np.ndarray, d: int, shape) -> np.ndarray:
    """Level-0 pixels at least four mask cells away from ``mask`` (so the soft edge of a stroke, the
    nuclei and the JPEG blocks of the changed area are outside)."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    up = np.repeat(np.repeat(grown, d, 0), d, 1)[: shape[0], : shape[1]]
    return ~up


def test_decoys_are_dark_like_tumour_outside_the_tumour_mask_and_change_nothing_else(tmp_path):
    kwargs = dict(width=2400, height=1800, mpp=0.5, seed=7, tumor_fraction=0.08)
    plain = synth.write_synthetic_slide(tmp_path / "plain.svs", **kwargs)
    truth = synth.write_synthetic_slide(tmp_path / "decoy.svs", **kwargs, decoy_fraction=0.1)
    np.testing.assert_array_equal(plain.tumor, truth.tumor)
    assert not (truth.decoy & truth.tumor).any() and not (truth.decoy & ~truth.tissue).any()
    assert truth.decoy_fraction == pytest.approx(0.1, abs=2 / truth.tissue.sum())
    level0, before = _level0(truth.path), _level0(plain.path)
    d = truth.mask_downsample
    keep = _far_from(truth.decoy, d, level0.shape)
    np.testing.assert_array_equal(level0[keep], before[keep])
    # mean colour per class at the mask cells' centres: decoys are as dark as tumour, unlike stroma
    ii, jj = np.nonzero(truth.tissue)
    pix = level0[ii * d + d // 2, jj * d + d // 2].astype(float).mean(-1)
    tumor, decoy = truth.tumor[ii, jj], truth.decoy[ii, jj]
    stroma = pix[~tumor & ~decoy].mean()
    assert abs(pix[decoy].mean() - pix[tumor].mean()) < 25
    assert pix[decoy].mean() < stroma - 40


def test_ink_lies_on_glass_and_tissue_and_changes_nothing_else(tmp_path):
    kwargs = dict(width=3000, height=2400, mpp=0.5, seed=2, tumor_fraction=0.05)
    plain = synth.write_synthetic_slide(tmp_path / "plain.svs", **kwargs)
    truth = synth.write_synthetic_slide(
        tmp_path / "ink.svs", **kwargs, ink=("blue", "green"), border=True
    )
    assert (truth.ink & truth.tissue).any() and (truth.ink & ~truth.tissue).any()
    assert truth.ink[:, 0].all()  # the dark border runs down the left edge
    level0, before = _level0(truth.path), _level0(plain.path)
    keep = _far_from(truth.ink, truth.mask_downsample, level0.shape)
    assert keep.mean() > 0.5
    np.testing.assert_array_equal(level0[keep], before[keep])
    with pytest.raises(ValueError, match="unknown ink colour"):
        synth.write_synthetic_slide(tmp_path / "x.svs", **kwargs, ink=("purple",))


def test_cli_decoy_cohort_writes_decoy_masks_for_both_classes(tmp_path):
    out = tmp_path / "hard"
    args = ["synth", str(out), "--slides", "2", "--seed", "2", "--size-scale", "0.4"]
    assert main([*args, "--decoys", "0.1"]) == 0
    cohort = json.loads((out / "cohort.json").read_text())
    masks = json.loads((out / "masks" / "masks.json").read_text())["slides"]
    assert cohort["params"]["decoy_fraction"] == 0.1
    assert {s["label"] for s in cohort["slides"]} == {"normal", "tumor"}
    for s in cohort["slides"]:
        decoy, tumor = _mask(out, s, "decoy"), _mask(out, s, "tumor")
        assert masks[s["slide_id"]]["decoy_mask"] == s["decoy_mask"]
        assert decoy.shape == tuple(s["mask_shape"]) and decoy.any() and not (decoy & tumor).any()
        measured = decoy.sum() / _mask(out, s, "tissue").sum()
        assert s["decoy_fraction"] == pytest.approx(measured, abs=1e-6)


def test_cli_prefix_renames_every_id_and_keeps_the_pixels(tmp_path, capsys):
    common = ["--slides", "3", "--seed", "4", "--size-scale", "0.3"]
    plain, ext = tmp_path / "plain", tmp_path / "ext"
    assert main(["synth", str(plain), *common]) == 0
    assert main(["synth", str(ext), *common, "--prefix", "ext_"]) == 0
    labels_a, labels_b = pd.read_csv(plain / "labels.csv"), pd.read_csv(ext / "labels.csv")
    assert list(labels_b.slide_id) == ["ext_" + s for s in labels_a.slide_id]
    assert list(labels_b.case_id) == ["ext_" + c for c in labels_a.case_id]
    assert list(labels_b.label) == list(labels_a.label)
    surv_a, surv_b = pd.read_csv(plain / "survival.csv"), pd.read_csv(ext / "survival.csv")
    assert list(surv_b.case_id) == ["ext_" + c for c in surv_a.case_id]
    pd.testing.assert_frame_equal(surv_a.drop(columns="case_id"), surv_b.drop(columns="case_id"))
    index = json.loads((ext / "masks" / "masks.json").read_text())["slides"]
    assert sorted(index) == sorted(labels_b.slide_id)
    assert sorted(p.name for p in (ext / "slides").glob("*.svs")) == sorted(
        f"{s}.svs" for s in labels_b.slide_id
    )
    for sid in labels_a.slide_id:
        assert index["ext_" + sid]["tumor_mask"] == f"masks/ext_{sid}_tumor.png"
        np.testing.assert_array_equal(
            _level0(ext / "slides" / f"ext_{sid}.svs"), _level0(plain / "slides" / f"{sid}.svs")
        )
        for kind in ("tissue", "tumor"):
            a = (plain / "masks" / f"{sid}_{kind}.png").read_bytes()
            assert (ext / "masks" / f"ext_{sid}_{kind}.png").read_bytes() == a
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "bad"), *common, "--prefix", "a/b"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prefix 'a/b'" in err[0]
