"""Bad slides fail with one line and leave nothing behind; `--record-failure` records them instead."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

import pipeline.store
from pipeline.store import read_array, read_attrs


def _truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) * 6 // 10])  # cuts the directory that follows the tile data


def _garbled(src, dst):
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    data[200_000:800_000] = rng.integers(0, 256, 600_000, dtype=np.uint8).tobytes()  # tile bytes
    dst.write_bytes(bytes(data))


def _not_a_slide(src, dst):
    dst.write_text("slide_id,label\nS1,tumour\n")


BAD = {"truncated": _truncated, "garbled_tiles": _garbled, "not_a_slide": _not_a_slide}


@pytest.fixture(params=sorted(BAD))
def bad_slide(request, slides_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    path = src / "bad.svs"
    BAD[request.param](slides_dir / "CMU-1-Small-Region.svs", path)
    return path


def test_bad_slide_one_line_and_no_output(cli, bad_slide, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, errors = cli("tile", bad_slide, "-o", out_dir / "bad.zarr", "--qc", out_dir / "bad.png")
    assert code == 1
    assert len(errors) == 1 and errors[0].startswith(f"ERROR {bad_slide}: ")
    assert list(out_dir.iterdir()) == []  # no store, no QC, no temporary sibling


def test_record_failure_publishes_a_failed_store(cli, bad_slide, tmp_path):
    out_dir = tmp_path / "out"
    out, qc = out_dir / "bad.zarr", out_dir / "bad.png"
    code, errors = cli("tile", bad_slide, "-o", out, "--qc", qc, "--record-failure")
    assert code == 0 and len(errors) == 1
    attrs = read_attrs(out)
    assert attrs["failed"] is True and attrs["error"] == errors[0]
    assert attrs["slide"] == str(bad_slide.resolve()) and attrs["n_patches"] == 0
    coords = read_array(out, "coords")
    assert coords.shape == (0, 2) and coords.dtype == np.int32
    picture = cv2.imread(str(qc))
    assert picture is not None and (picture < 128).any()  # the error is written on it
    assert sorted(p.name for p in out_dir.iterdir()) == ["bad.png", "bad.zarr"]


def test_config_errors_are_not_recorded_as_slide_failures(cli, slides_dir, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("slides_dir: s\nresults_dir: r\ntasks: []\n")
    code, errors = cli(
        "tile",
        slides_dir / "CMU-1-Small-Region.svs",
        "-o",
        tmp_path / "x.zarr",
        "--config",
        config,
        "--record-failure",
    )
    assert code == 1 and len(errors) == 1 and not (tmp_path / "x.zarr").exists()


def test_interrupted_write_leaves_nothing(cli, slides_dir, tmp_path, monkeypatch):
    """Ctrl-C (or a failure) after the coordinates were written but before attrs: nothing published."""
    real = pipeline.store.to_jsonable

    def interrupt(value):
        if isinstance(value, dict) and "n_patches" in value:
            raise KeyboardInterrupt
        return real(value)

    monkeypatch.setattr(pipeline.store, "to_jsonable", interrupt)
    out_dir = tmp_path / "out"
    code, _ = cli(
        "tile",
        slides_dir / "CMU-1-Small-Region.svs",
        "-o",
        out_dir / "t.zarr",
        "--qc",
        out_dir / "t.png",
    )
    assert code == 130
    assert list(out_dir.iterdir()) == []


def test_an_old_store_survives_a_failed_rewrite(cli, slides_dir, tmp_path):
    slide = tmp_path / "s.svs"
    shutil.copy(slides_dir / "CMU-1-Small-Region.svs", slide)
    out = tmp_path / "s.zarr"
    assert cli("tile", slide, "-o", out)[0] == 0
    before = read_array(out, "coords")
    slide.write_text("overwritten by mistake")
    assert cli("tile", slide, "-o", out)[0] == 1
    np.testing.assert_array_equal(read_array(out, "coords"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.svs", "s.zarr"]


def test_blank_slide_gives_an_empty_store(cli, tmp_path, caplog):
    import tifffile

    rng = np.random.default_rng(0)
    glass = (rng.normal(240, 2, (1536, 2048, 1)) + np.zeros(3)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "blank.tif"
    tifffile.imwrite(
        path, glass, tile=(256, 256), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER"
    )
    out = tmp_path / "blank.zarr"
    code, errors = cli("tile", path, "-o", out, "--qc", tmp_path / "blank.png")
    assert code == 0 and errors == []
    attrs = read_attrs(out)
    assert attrs["slide_mpp"] == pytest.approx(0.5) and attrs["mpp_source"] == "metadata"
    assert attrs["n_patches"] == 0 and attrs["tissue_area_mm2"] == 0 and attrs["failed"] is False
    assert attrs["n_candidates"] == 6 * 8
    assert any("empty tile store" in r.getMessage() for r in caplog.records)
