"""Many slides per process: a group job writes the same stores as one process per slide, keeps its
finished stores when killed, shards over devices with the same result, and the workflow embeds only
slides that have no store yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.cli import main
from pipeline.device import shard_devices
from pipeline.errors import ConfigError, PipelineError, SlideReadError
from pipeline.extract_group import SlideJob, balance, store_answers
from pipeline.features import ExtractOptions
from pipeline.store import open_store
from pipeline.tilestore import read_tiles

REPO = Path(__file__).resolve().parents[2]
ENCODER = "efficientnet_lite0"
# attrs that say how long a run took, or that differ by design between processes
TIMING = {"extraction", "group_summary"}


def grid(x0: int, y0: int, n: int, step: int = 128) -> list[tuple[int, int]]:
    """``n`` patch corners of CMU-1-Small-Region (2220×2967) in a raster from (x0, y0)."""
    per_row = (1900 - x0) // step
    return [(x0 + step * (i % per_row), y0 + step * (i // per_row)) for i in range(n)]


@pytest.fixture
def cohort(tmp_path, tile_store, cmu, tcga):
    """Four slides' tile stores: three cut from CMU (different patches), one from the TCGA slide at
    level 1, so stores differ in size, geometry and reader."""
    specs = [
        ("a", cmu, grid(0, 0, 7), 0.5, 256, None),
        ("b", tcga, [(2000, 1600), (512, 2048), (3000, 800)], 1.0, 256, 0.5),
        ("c", cmu, grid(64, 900, 5), 0.5, 224, None),
        ("d", cmu, grid(300, 1700, 6), 0.5, 256, None),
    ]
    out = []
    for name, slide, coords, mpp, size, slide_mpp in specs:
        tiles = tile_store(
            tmp_path / "tiles" / f"{name}.zarr", slide, coords, mpp, size, slide_mpp=slide_mpp
        )
        out.append((name, slide, tiles))
    return out


def argv(cohort, outdir: Path, *extra: str) -> list[str]:
    pairs = [str(p) for _, slide, tiles in cohort for p in (slide, tiles)]
    outs = [a for name, _, _ in cohort for a in ("-o", str(outdir / f"{name}.zarr"))]
    common = ["--encoder", ENCODER, "--device", "cpu", "--batch-size", "3", "--workers", "1"]
    return ["extract", *pairs, *outs, *common, *extra]


def content(store: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    group = open_store(store)
    attrs = {k: v for k, v in dict(group.attrs).items() if k not in TIMING}
    return np.asarray(group["features"][...]), np.asarray(group["coords"][...]), attrs


def stamp(store: Path) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns for p in sorted([store, *store.rglob("*")]))


def assert_same_stores(a: Path, b: Path, names) -> None:
    for name in names:
        fa, ca, attrs_a = content(a / f"{name}.zarr")
        fb, cb, attrs_b = content(b / f"{name}.zarr")
        assert fa.dtype == fb.dtype == np.float16
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(ca, cb)
        assert attrs_a == attrs_b, name


@pytest.fixture
def singles(tmp_path, cohort):
    """The reference: every slide by its own `wsi-mil extract` call (one model build each)."""
    outdir = tmp_path / "single"
    for one in cohort:
        assert main(argv([one], outdir)) == 0
    return outdir


def test_group_writes_the_stores_of_one_slide_per_process(tmp_path, cohort, singles):
    outdir = tmp_path / "group"
    assert main(argv(cohort, outdir, "--done", str(tmp_path / "done.json"))) == 0
    assert_same_stores(singles, outdir, [name for name, _, _ in cohort])
    for name, _, tiles in cohort:
        feats, coords, attrs = content(outdir / f"{name}.zarr")
        assert feats.shape == (len(read_tiles(tiles).coords), 1280)
        assert attrs["requested"] == {
            "encoder": ENCODER,
            "weights": "pretrained",
            "precision": "auto",
            "dtype": "float16",
        }
    summary = yaml.safe_load((tmp_path / "done.json").read_text())
    assert {Path(k).name: v["status"] for k, v in summary.items()} == {
        f"{name}.zarr": "done" for name, _, _ in cohort
    }
    assert not [p for p in outdir.iterdir() if p.name.startswith(".")]


def test_sharding_over_two_cpu_processes_gives_the_same_stores(tmp_path, cohort, singles):
    outdir = tmp_path / "sharded"
    assert main(argv(cohort, outdir, "--devices", "cpu,cpu")) == 0
    assert_same_stores(singles, outdir, [name for name, _, _ in cohort])
    assert shard_devices("cpu,cpu") == ["cpu", "cpu"] and shard_devices("cpu") == ["cpu"]


def test_balance_splits_patches_evenly_and_keeps_every_slide_once(cohort, tmp_path):
    jobs = [SlideJob(slide, tiles, tmp_path / f"{n}.zarr") for n, slide, tiles in cohort]
    shards = balance(jobs, 2)
    assert sorted(j.out.name for s in shards for j in s) == sorted(j.out.name for j in jobs)
    loads = [sum(len(read_tiles(j.tiles).coords) for j in s) for s in shards]
    assert loads == [10, 11] or loads == [11, 10]  # 7+3 | 5+6 patches


@pytest.mark.timeout(300)
def test_killed_group_job_keeps_finished_stores_and_the_rerun_completes(tmp_path, cmu, tile_store):
    # four slides of ~60 patches: each takes a second or more, so the kill lands mid-group
    cohort = [
        (name, cmu, tile_store(tmp_path / "tiles" / f"{name}.zarr", cmu, grid(x0, 0, 60)))
        for name, x0 in (("p", 0), ("q", 32), ("r", 64), ("s", 96))
    ]
    outdir = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", *argv(cohort, outdir, "--skip-done")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not (outdir / "p.zarr").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = [n for n, _, _ in cohort if (outdir / f"{n}.zarr").exists()]
    assert 1 <= len(finished) < len(cohort), "the kill should land mid-group"
    before = {n: (stamp(outdir / f"{n}.zarr"), content(outdir / f"{n}.zarr")) for n in finished}

    assert main(argv(cohort, outdir, "--skip-done")) == 0
    for name, _, tiles in cohort:
        feats, coords, _ = content(outdir / f"{name}.zarr")
        assert feats.shape == (60, 1280)
        np.testing.assert_array_equal(coords, read_tiles(tiles).coords)
    for name, (mtimes, (feats, _, _)) in before.items():
        assert stamp(outdir / f"{name}.zarr") == mtimes, f"{name} was rewritten"
        np.testing.assert_array_equal(content(outdir / f"{name}.zarr")[0], feats)
    # the killed writer's temporary is gone: the re-run of its slide removed it
    assert not [p.name for p in outdir.iterdir() if p.name.startswith(".")]


def test_a_store_is_reused_only_for_the_same_request(tmp_path, cohort):
    name, slide, tiles = cohort[2]
    out = tmp_path / "c.zarr"
    assert main(argv([cohort[2]], tmp_path)) == 0
    options = ExtractOptions(device="cpu")
    t = read_tiles(tiles)
    assert store_answers(out, t, options.requested(ENCODER, "pretrained"))
    assert not store_answers(out, t, options.requested(ENCODER, "random"))
    assert not store_answers(
        out, t, ExtractOptions(dtype="float32").requested(ENCODER, "pretrained")
    )
    other = read_tiles(cohort[3][2])
    assert not store_answers(out, other, options.requested(ENCODER, "pretrained"))


# --- workflow: which slides a run embeds -----------------------------------------------------------


def dry_run(workdir: Path, *targets: str) -> str:
    env = dict(os.environ, SLURM_CONF=os.devnull)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "-n",
        "-p",
        "--cores",
        "1",
        *targets,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def job_counts(text: str) -> dict[str, int]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def fake_run(root: Path, slides: list[str], done: list[str], per_job: int) -> list[str]:
    """Empty slide files and tile stores (a dry run opens neither), feature stores of ``done``."""
    (root / "slides").mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text(
        "slide_id,case_id,label\n"
        + "".join(f"{s},{s},{'ab'[i % 2]}\n" for i, s in enumerate(slides))
    )
    config = {
        "slides_dir": str(root / "slides"),
        "results_dir": "results",
        "tasks": [{"name": "t", "type": "classification", "table": str(root / "labels.csv")}],
        "features": {"encoders": [ENCODER], "device": "cpu", "slides_per_job": per_job},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    for sid in slides:
        if not (root / "slides" / f"{sid}.svs").exists():
            (root / "slides" / f"{sid}.svs").touch()
    time.sleep(0.01)
    for sid in slides:
        (root / "results" / "tiles" / f"{sid}.zarr").mkdir(parents=True, exist_ok=True)
    time.sleep(0.01)
    for sid in done:
        (root / "results" / "features" / ENCODER / f"{sid}.zarr").mkdir(parents=True, exist_ok=True)
    return [f"results/features/{ENCODER}/{sid}.zarr" for sid in slides]


def test_workflow_groups_only_slides_without_a_store(tmp_path):
    slides = [f"s{i}" for i in range(7)]
    targets = fake_run(tmp_path / "a", slides, done=[], per_job=3)
    text = dry_run(tmp_path / "a", *targets)
    counts = job_counts(text)
    assert counts["extract_batch"] == 3 and counts["extract"] == 7  # groups of 3, 3 and 1
    groups = [line for line in text.splitlines() if "wsi-mil extract" in line and "--done" in line]
    assert sorted(line.count(" -o ") for line in groups) == [1, 3, 3]

    # five slides were embedded before; three have no store: one group of those three
    root = tmp_path / "b"
    targets = fake_run(root, [*slides, "s7"], done=slides[:5], per_job=3)
    text = dry_run(root, *targets)
    counts = job_counts(text)
    assert counts["extract_batch"] == 1 and counts["extract"] == 3
    (group,) = [line for line in text.splitlines() if "--done" in line]
    assert all(f"/{s}.svs" in group for s in ("s5", "s6", "s7"))
    assert not any(f"/{s}.svs" in group for s in slides[:5])
    # one slide's store can be asked for alone (its group runs)
    counts = job_counts(dry_run(root, targets[-1]))
    assert counts["extract_batch"] == 1 and counts["extract"] == 1

    # that group ran; a new slide arrives: only the new slide is embedded, in a group of its own
    (members,) = (root / "results" / "staging" / "features" / ENCODER).glob("group-*.members")
    assert members.read_text().split() == ["s5", "s6", "s7"]
    members.with_suffix(".json").write_text("{}")
    time.sleep(0.01)
    targets = fake_run(root, [*slides, "s7", "s8"], done=[*slides, "s7"], per_job=3)
    text = dry_run(root, *targets)
    counts = job_counts(text)
    assert counts["extract_batch"] == 1 and counts["extract"] == 1
    (group,) = [line for line in text.splitlines() if "--done" in line]
    assert "/s8.svs" in group and group.count(" -o ") == 1


@pytest.mark.parametrize(
    "raised",
    [
        ConfigError("features.encoders", "unknown encoder nope", "Use `wsi-mil encoders`."),
        SlideReadError("/data/a.svs", "cannot read pixels at (0, 0) level 0", "Re-scan it."),
        ValueError("first line\nsecond line of library advice"),
    ],
)
def test_a_worker_error_keeps_its_kind_across_the_process_queue(raised, monkeypatch):
    """A device worker's error reaches the parent as the same kind (a ConfigError still stops the run,
    a SlideReadError still names its slide), through the pickling queue the workers use."""
    import multiprocessing

    from pipeline import extract_group

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(extract_group, "run_group", fail)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    queue = multiprocessing.get_context("spawn").Queue()
    extract_group._shard_main(1, [], ENCODER, "random", None, 1, queue)
    k, outcomes, error = queue.get(timeout=10)
    parent = extract_group.worker_error(error, "cuda:1")
    assert (k, outcomes) == (1, None)
    if isinstance(raised, PipelineError):
        assert type(parent) is type(raised) and parent.where == raised.where
        assert parent.line() == (
            f"ERROR {raised.where}: {raised.cause} (worker on cuda:1). {raised.remedy}"
        )
    else:
        assert type(parent) is PipelineError
        assert parent.line() == (
            "ERROR extract: ValueError: first line (worker on cuda:1). See the worker's log."
        )
