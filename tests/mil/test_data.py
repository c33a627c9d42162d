"""Feature loading: our zarr, CLAM/TRIDENT .h5, .pt; float16 in memory; missing, empty, unlabelled slides."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.mil.data import Bag, FeatureBank, find_feature_files, read_feature_file
from pipeline.store import write_store

from .conftest import write_features


def _arrays(seed=0, dim=12):
    rng = np.random.default_rng(seed)
    return {f"s{i}": rng.normal(size=(5 + 3 * i, dim)).astype(np.float32) for i in range(4)}


@pytest.mark.parametrize("fmt", ["zarr", "h5", "pt"])
def test_every_format_loads_the_same_bags(tmp_path, fmt):
    arrays = _arrays()
    write_features(tmp_path / fmt, arrays, fmt)
    bank = FeatureBank.load(tmp_path / fmt)
    assert bank.slides == sorted(arrays) and bank.dim == 12
    for slide, x in arrays.items():
        kept = bank.get(slide)
        assert kept.dtype == torch.float16 and kept.shape == x.shape  # float16 in memory
        bag = Bag(slide, slide, (slide,), 0, bank).features()
        assert bag.dtype == torch.float32  # float32 per bag
        np.testing.assert_array_equal(bag.numpy(), x.astype(np.float16).astype(np.float32))
    if fmt != "pt":
        coords = bank.coords("s2")
        assert coords.shape == (arrays["s2"].shape[0], 2)
        assert coords[1, 0] == 256


def test_trident_style_h5_with_batch_axis_and_pt_dict(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    coords = np.arange(12, dtype=np.int64).reshape(6, 2)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["features"] = x[None]  # [1, N, D] as some TRIDENT versions write
        f["coords"] = coords[None]
    torch.save(
        {"features": torch.from_numpy(x), "coords": torch.from_numpy(coords)}, tmp_path / "b.pt"
    )
    for name in ("a.h5", "b.pt"):
        feats, c = read_feature_file(tmp_path / name)
        np.testing.assert_array_equal(feats, x)
        np.testing.assert_array_equal(c, coords)


def test_clam_output_folder_is_found_through_h5_files(tmp_path):
    write_features(tmp_path / "h5_files", _arrays(), "h5")
    assert sorted(find_feature_files(tmp_path)) == ["s0", "s1", "s2", "s3"]


def test_missing_empty_and_unlabelled_slides_are_reported_one_line_each(tmp_path, caplog):
    arrays = _arrays()
    d = write_features(tmp_path / "f", arrays)
    write_store(
        d / "blank.zarr",
        {"features": np.zeros((0, 12), np.float16), "coords": np.zeros((0, 2), np.int32)},
        {},
    )
    wanted = ["s0", "s1", "blank", "ghost"]  # s2, s3 have stores but no label
    with caplog.at_level(logging.INFO):
        bank = FeatureBank.load(d, wanted)
    lines = caplog.messages
    assert bank.slides == ["s0", "s1"]
    assert bank.missing == ["ghost"] and bank.empty == ["blank"] and bank.unlabelled == ["s2", "s3"]
    assert sum("ghost" in line for line in lines) == 1
    assert any(line.startswith("slide ghost: in the labels but no feature store") for line in lines)
    assert any(
        line.startswith("slide blank: feature store has 0 patches; left out") for line in lines
    )
    assert any(line.startswith("slide s2: feature store has no label; ignored") for line in lines)


def test_float16_overflow_keeps_float32(tmp_path):
    big = np.full((3, 4), 1e6, np.float32)
    bank = FeatureBank.from_arrays({"big": big, "ok": np.ones((2, 4), np.float32)})
    assert bank.get("big").dtype == torch.float32 and torch.isfinite(bank.get("big")).all()
    assert bank.get("ok").dtype == torch.float16


def test_bad_directories_fail_with_one_clear_error(tmp_path):
    d = write_features(tmp_path / "dup", _arrays())
    write_features(d, {"s0": np.ones((2, 12), np.float32)}, "pt")
    with pytest.raises(PipelineError, match="two feature stores for slide 's0'"):
        find_feature_files(d)
    d2 = write_features(tmp_path / "dims", {"a": np.ones((2, 12), np.float32)})
    write_features(d2, {"b": np.ones((2, 8), np.float32)})
    with pytest.raises(PipelineError, match="slide b has 8-d features, other slides 12-d"):
        FeatureBank.load(d2)
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(PipelineError, match="cannot read features"):
        read_feature_file(tmp_path / "broken.h5")
    with pytest.raises(PipelineError, match="features directory not found"):
        FeatureBank.load(tmp_path / "nowhere")


def test_bags_read_from_disk_when_memory_is_short(tmp_path):
    arrays = _arrays()
    write_features(tmp_path / "f", arrays, "h5")
    bank = FeatureBank.load(tmp_path / "f", memory_fraction=0.0)  # pretend nothing fits
    assert bank.lazy and bank.slides == sorted(arrays)
    np.testing.assert_array_equal(
        Bag("s1", "c", ("s1", "s2"), 0, bank).features().numpy(),
        np.concatenate([arrays["s1"], arrays["s2"]]).astype(np.float16).astype(np.float32),
    )


def test_bfloat16_copies_are_cached_and_the_float16_original_kept():
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    bank = FeatureBank.from_arrays({"s": x})
    b1 = bank.get("s", torch.bfloat16)
    assert b1.dtype == torch.bfloat16 and bank.get("s", torch.bfloat16) is b1  # cast once
    assert torch.equal(b1, torch.from_numpy(x).half().float().to(torch.bfloat16))
    assert bank.get("s").dtype == torch.float16  # float32 runs still see the float16 values
    assert torch.equal(bank.get("s", torch.float32), torch.from_numpy(x).half().float())
