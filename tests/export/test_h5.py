"""h5 export/import: the CLAM/TRIDENT layout, and round trips that give back the same bytes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.export.h5 import export_h5, import_h5
from pipeline.store import open_store, write_store

TILES = {
    "slide_size": [4096, 3072],
    "slide_mpp": 0.25,
    "target_mpp": 0.5,
    "patch_size": 256,
    "level0_patch_size": 512,
    "overlap": 0,
    "read_level": 1,
}


def _store_contents(path):
    group = open_store(path)
    arrays = {name: np.asarray(group[name][...]) for name in ("features", "coords")}
    return arrays, dict(group.attrs)


def _assert_same_store(a, b):
    (arr_a, attrs_a), (arr_b, attrs_b) = _store_contents(a), _store_contents(b)
    for name in arr_a:
        assert arr_a[name].dtype == arr_b[name].dtype
        assert arr_a[name].tobytes() == arr_b[name].tobytes()
    assert attrs_a == attrs_b


@pytest.fixture
def feature_store(tmp_path):
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(5) * 512, np.arange(3) * 512), -1).reshape(-1, 2)
    features = rng.normal(size=(len(coords), 12)).astype(np.float16)
    attrs = {"slide_id": "S1", "encoder": "resnet50", "dim": 12, "tiles": TILES, "n_patches": 15}
    path = tmp_path / "S1.zarr"
    write_store(path, {"features": features, "coords": coords.astype(np.int32)}, attrs)
    return path, features, coords


def test_export_writes_clam_trident_layout(feature_store, tmp_path):
    path, features, coords = feature_store
    out = export_h5(path, tmp_path / "h5" / "S1.h5")
    with h5py.File(out, "r") as h5:
        assert h5["features"].dtype == np.float16
        np.testing.assert_array_equal(h5["features"][...], features)
        np.testing.assert_array_equal(h5["coords"][...], coords)
        a = dict(h5["coords"].attrs)
    # TRIDENT's names: 20x patches of 256 px from a 40x (0.25 µm/px) scan, 512 level-0 px a side
    assert a["patch_size"] == 256 and a["patch_size_level0"] == 512
    assert a["level0_magnification"] == 40.0 and a["target_magnification"] == 20.0
    assert (a["level0_width"], a["level0_height"]) == (4096, 3072)
    assert a["name"] == "S1" and a["overlap"] == 0
    # CLAM's names: patch_size * downsample is the level-0 side
    assert a["patch_level"] == 0
    assert a["patch_size"] * a["downsample"][0] == 512
    assert list(a["level_dim"]) == [4096, 3072]


def test_our_store_round_trips_exactly(feature_store, tmp_path):
    path, _, _ = feature_store
    h5 = export_h5(path, tmp_path / "S1.h5")
    back = import_h5(h5, tmp_path / "back" / "S1.zarr")
    _assert_same_store(path, back)


def test_trident_file_import_export_import_is_bit_identical(tmp_path):
    rng = np.random.default_rng(1)
    coords = rng.integers(0, 50, size=(40, 2)).astype(np.int64) * 448
    features = rng.normal(size=(40, 1024)).astype(np.float32)
    src = tmp_path / "T1.h5"
    with h5py.File(src, "w") as h5:
        h5["features"] = features
        h5["coords"] = coords
        h5["coords"].attrs.update(
            {
                "patch_size": 224,
                "patch_size_level0": 448,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": "T1",
                "level0_width": 30000,
                "level0_height": 20000,
                "savetodir": "/somewhere",
            }
        )
    # the commands, as a user runs them
    assert main(["import-h5", str(src), "-o", str(tmp_path / "z1")]) == 0
    first = tmp_path / "z1" / "T1.zarr"
    arrays, attrs = _store_contents(first)
    np.testing.assert_array_equal(arrays["features"], features)
    np.testing.assert_array_equal(arrays["coords"], coords)
    assert attrs["tiles"]["level0_patch_size"] == 448
    assert attrs["tiles"]["slide_mpp"] == pytest.approx(0.25)
    assert attrs["tiles"]["slide_size"] == [30000, 20000]
    assert main(["export-h5", str(first), "-o", str(tmp_path / "h5")]) == 0
    with h5py.File(tmp_path / "h5" / "T1.h5", "r") as h5:
        assert dict(h5["coords"].attrs)["savetodir"] == "/somewhere"  # the source's attrs kept
        assert h5["features"][...].tobytes() == features.tobytes()
    assert main(["import-h5", str(tmp_path / "h5" / "T1.h5"), "-o", str(tmp_path / "z2")]) == 0
    _assert_same_store(first, tmp_path / "z2" / "T1.zarr")


def test_import_refuses_a_file_without_features(tmp_path):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as h5:
        h5["coords"] = np.zeros((3, 2), np.int32)
    with pytest.raises(PipelineError, match="no features dataset"):
        import_h5(bad, tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()
