"""Killing Snakemake in the middle of feature extraction loses nothing: the re-run finishes the
rest, recomputes no finished slide (mtimes unchanged) and no half-written store is ever visible."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline.store import read_array

pytestmark = pytest.mark.slow


def stamp(store: Path) -> tuple[int, ...]:
    """Modification times of a store folder and every file in it."""
    return tuple(p.stat().st_mtime_ns for p in sorted([store, *store.rglob("*")]))


def assert_complete(store: Path, tiles: Path) -> None:
    features = read_array(store, "features")
    assert features.shape == (len(read_array(tiles, "coords")), 1280)


def files_stamp(store: Path) -> dict[str, int]:
    """Modification times of the files of a store (the folder itself is moved into place)."""
    return {
        str(p.relative_to(store)): p.stat().st_mtime_ns
        for p in store.rglob("*")
        if p.is_file() and p.name != ".snakemake_timestamp"  # Snakemake's mark of a finished job
    }


def test_killed_during_extraction_resumes_without_recomputing(e2e, wf, job_counts, tmp_path):
    """The victims' slides are embedded by one group job; killed after its first slide, the re-run
    keeps the finished slides' stores (staged, then moved into place untouched) and embeds the rest.
    Four victims: the tiny slides take a second or two each, so the kill lands mid-group."""
    work = wf.copy_run(e2e, tmp_path / "run")
    results = work / "results"
    feats = results / "features" / wf.ENCODER
    staging = results / "staging" / "features" / wf.ENCODER
    slides = sorted(
        p.name[: -len(".zarr")] for p in feats.glob("*.zarr") if wf.BROKEN not in p.name
    )
    victims = slides[:4]
    for sid in victims:
        shutil.rmtree(feats / f"{sid}.zarr")
    kept = {sid: stamp(feats / f"{sid}.zarr") for sid in slides if sid not in victims}
    targets = [f"results/features/{wf.ENCODER}/{sid}.zarr" for sid in victims]

    proc = subprocess.Popen(
        wf.snakemake_cmd(work, "--cores", "1", *targets),
        cwd=work,
        env=wf.snakemake_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any((staging / f"{sid}.zarr").exists() for sid in victims):
            assert proc.poll() is None, "snakemake ended before the first store appeared"
            assert time.monotonic() < deadline, "no feature store appeared in 300 s"
            time.sleep(0.02)
        # the node dies mid-group (SIGKILL to Snakemake and its jobs: nobody cleans up)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    finished = [sid for sid in victims if (staging / f"{sid}.zarr").exists()]
    assert 1 <= len(finished) < len(victims)  # some finished, the others were cut off
    assert not any((feats / f"{sid}.zarr").exists() for sid in victims)  # the group did not end
    for sid in finished:  # what is there is complete; nothing half-written is left around
        assert_complete(staging / f"{sid}.zarr", results / "tiles" / f"{sid}.zarr")
    # a SIGKILLed writer leaves its hidden temporary (it never looks finished); the re-run removes it
    done = {sid: files_stamp(staging / f"{sid}.zarr") for sid in finished}

    wf.run_snakemake(work, "--unlock")  # what a user does after a hard kill
    rerun = wf.run_snakemake(work, "--cores", "1", *targets)
    counts = job_counts(rerun.stdout + rerun.stderr)
    assert counts["extract_batch"] == 1 and counts["extract"] == len(victims)
    for sid in victims:
        assert_complete(feats / f"{sid}.zarr", results / "tiles" / f"{sid}.zarr")
    for sid, before in kept.items():
        assert stamp(feats / f"{sid}.zarr") == before, f"{sid} was recomputed"
    for sid, before in done.items():
        assert files_stamp(feats / f"{sid}.zarr") == before, f"{sid} was recomputed"
    for folder in (feats, staging):
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    # the whole workflow now needs no tiling or extraction, only what depends on new features
    dry = wf.run_snakemake(work, "-n")
    plan = job_counts(dry.stdout + dry.stderr)
    assert "tile" not in plan and "extract" not in plan and plan["train"] > 0
    assert "extract_batch" not in plan


def test_changed_settings_rerun_only_the_stages_they_affect(e2e, wf, job_counts, tmp_path):
    work = wf.copy_run(e2e, tmp_path / "run")
    base = yaml.safe_load((work / "config.yaml").read_text())

    def plan(**sections) -> dict[str, int]:
        config = {**base, **{k: {**base.get(k, {}), **v} for k, v in sections.items()}}
        wf.write_config(work, config)
        dry = wf.run_snakemake(work, "-n")
        text = dry.stdout + dry.stderr
        return {} if "Nothing to be done" in text else job_counts(text)

    # how features are computed (batch size, decoding workers) changes nothing
    assert plan(features={"batch_size": 7, "workers": 3}) == {}
    # a training setting retrains every model, and re-tiles or re-embeds nothing
    retrain = plan(mil={"epochs": 3})
    assert "tile" not in retrain and "extract" not in retrain and "splits" not in retrain
    assert retrain["train"] == 2 * 2 * 2  # baseline and MHIM folds, one rule
    # a tiling setting re-tiles every slide (and so everything after it)
    retile = plan(tiling={"min_tissue": 0.6})
    assert retile["tile"] == wf.N_SLIDES + 1 and retile["extract"] == wf.N_SLIDES + 1
