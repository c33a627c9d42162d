"""Faults a user meets on a cluster, injected into copies of the tiny workflow run (issue 25): random
hard kills of the whole run, two runs started at once, a full results disk, outputs damaged on disk.
Each ends in outputs identical to the clean run, or in one line saying what is wrong and where.
The full benchmark of random kills is bench/chaos.py (BENCHMARKS.md); this runs its small version."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import read_attrs, write_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)"),
]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chaos():
    """bench/chaos.py as a module: its kill-and-resume loop and its comparison of outputs."""
    spec = importlib.util.spec_from_file_location("chaos_bench", REPO / "bench" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def good_slides(results: Path, wf) -> list[str]:
    feats = results / "features" / wf.ENCODER
    return sorted(p.name[: -len(".zarr")] for p in feats.glob("*.zarr") if wf.BROKEN not in p.name)


def store_targets(wf, slides) -> list[str]:
    return [f"results/features/{wf.ENCODER}/{s}.zarr" for s in slides]


def remove_stores(results: Path, wf, slides) -> None:
    for sid in slides:
        shutil.rmtree(results / "features" / wf.ENCODER / f"{sid}.zarr", ignore_errors=True)


def hidden_temporaries(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for p in results.rglob(".*.tmp-*"))


def test_random_hard_kills_resume_to_the_clean_outputs(e2e, wf, chaos, tmp_path):
    """Two kill -9 of the whole process group at seeded random moments of re-extracting two slides,
    each resumed with the same command: every output equals the clean run's, bit for bit."""
    work = wf.copy_run(e2e, tmp_path / "run").resolve()
    victims = good_slides(work / "results", wf)[:2]
    cmd = wf.snakemake_cmd(work, "--cores", "2", *store_targets(wf, victims))
    moments = chaos.kill_moments(25, (0.0, 20.0))  # a clean re-extraction of both takes ~20 s

    kills, survived, differ, rows = chaos.run_rounds(
        wf, cmd, work, e2e / "results", 2, moments,
        lambda: remove_stores(work / "results", wf, victims), tmp_path,
    )  # fmt: skip
    assert (kills, survived, differ) == (2, 2, 0), rows
    assert not hidden_temporaries(work / "results")


def test_two_runs_started_at_once_one_writes_and_the_other_names_it(e2e, wf, tmp_path):
    """Started in the same instant in one folder: one run does the work, the other stops at once with
    one line naming the first (pid, host, start time, command) and never starts a job."""
    work = wf.copy_run(e2e, tmp_path / "run").resolve()
    victim = good_slides(work / "results", wf)[:1]
    remove_stores(work / "results", wf, victim)
    cmd = wf.snakemake_cmd(work, "--cores", "1", *store_targets(wf, victim))
    runs = [
        subprocess.Popen(
            cmd,
            cwd=work,
            env=wf.snakemake_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in runs]
    codes = [proc.returncode for proc in runs]
    assert sorted(codes) == [0, 1], outputs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    line = outputs[loser].strip().splitlines()[-1]
    assert re.fullmatch(
        rf"ERROR {re.escape(str(work))}: in use by another run of this workflow \(pid "
        rf"{runs[winner].pid} on host \S+, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC: snakemake "
        rf"--snakefile .*\)\. Wait for it to end \(or stop it\), then run the same command again; "
        r"a dry run \(-n\) may look meanwhile\.",
        line,
    ), line
    assert "rule " not in outputs[loser]  # it planned and ran nothing
    store = work / "results" / "features" / wf.ENCODER / f"{victim[0]}.zarr"
    assert read_attrs(store)["n_patches"] == read_attrs(e2e / store.relative_to(work))["n_patches"]


@pytest.fixture
def small_disk(tmp_path):
    """``mount(folder, size)``: a tmpfs of ``size`` bytes at ``folder`` (root only), unmounted after."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = []

    def mount(folder: Path, size: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_results_disk_stops_in_one_line_and_the_same_command_finishes(
    e2e, wf, chaos, tmp_path, small_disk
):
    """The results folder on a tmpfs with 16 KiB left: re-extracting two slides stops with one line
    naming the store and the free space, publishes nothing; with space freed, the same command
    finishes and every output equals the clean run's."""
    work = wf.copy_run(e2e, tmp_path / "run").resolve()
    source = work / "results.copy"
    (work / "results").rename(source)
    used = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    results = small_disk(work / "results", used + 64 * 2**20)
    subprocess.run(["cp", "-a", f"{source}/.", str(results)], check=True)
    shutil.rmtree(source)
    victims = good_slides(results, wf)[:2]
    remove_stores(results, wf, victims)
    filler = results / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(results).free - 16 * 2**10))
    cmd = ["--cores", "1", *store_targets(wf, victims)]

    full = wf.run_snakemake(work, *cmd, check=False)
    assert full.returncode != 0
    logs = sorted((results / "logs" / "extract_batch" / wf.ENCODER).glob("group-*.log"))
    last = max(logs, key=lambda p: p.stat().st_mtime).read_text().strip().splitlines()[-1]
    match = re.fullmatch(
        r"ERROR (?P<path>\S+): No space left on device \(ENOSPC; (?P<n>[\d.]+) (?P<u>B|KiB) free "
        r"there\)\. The disk is full: free space there \(df -h\) or write the results elsewhere, "
        r"then re-run\.",
        last,
    )
    assert match, last
    assert Path(match["path"]).name in {f"{s}.zarr" for s in victims}
    assert float(match["n"]) * {"B": 1, "KiB": 1024}[match["u"]] <= 16 * 2**10
    assert not hidden_temporaries(results)  # nothing half-written, under any name
    staging = results / "staging" / "features" / wf.ENCODER
    for sid in victims:  # neither published nor staged
        assert not (results / "features" / wf.ENCODER / f"{sid}.zarr").exists()
        assert not (staging / f"{sid}.zarr").exists()

    filler.unlink()
    wf.run_snakemake(work, *cmd)
    assert chaos.differences(e2e / "results", results) == {}


def test_damaged_or_foreign_stores_are_recomputed_and_a_missing_model_json_retrains(
    e2e, wf, chaos, tmp_path
):
    """A truncated chunk, a deleted chunk and a store of another encoder renamed into place are each
    named in one line and recomputed by the next run (Snakemake alone sees folders newer than their
    inputs); a fold whose model.json was deleted is trained again. Every output then equals the
    clean run's."""
    work = wf.copy_run(e2e, tmp_path / "run").resolve()
    results = work / "results"
    fold = results / "mil" / "tumour" / wf.ENCODER / "abmil" / "fold0"
    (fold / "model.json").unlink()  # Snakemake alone reports nothing to be done
    rel = fold.relative_to(work)
    run = wf.run_snakemake(work, "--cores", "1", str(rel / "metrics.json"))
    assert f"{rel}: model.json missing (deleted?): it is trained again" in run.stderr
    assert "rule train:" in run.stdout + run.stderr  # its files equal the clean run's (below)

    truncated, deleted, foreign = good_slides(results, wf)[:3]
    feats = results / "features" / wf.ENCODER
    chunk = feats / f"{truncated}.zarr" / "features" / "c" / "0" / "0"
    with open(chunk, "r+b") as handle:
        handle.truncate(chunk.stat().st_size // 2)
    (feats / f"{deleted}.zarr" / "features" / "c" / "0" / "0").unlink()
    attrs = read_attrs(feats / f"{foreign}.zarr")  # what a resnet50_trunc store of it records
    attrs.update(encoder="resnet50_trunc", dim=1024)
    attrs["requested"] = {**attrs["requested"], "encoder": "resnet50_trunc"}
    n = attrs["n_patches"]
    shutil.rmtree(feats / f"{foreign}.zarr")
    write_store(
        work / f"{foreign}.zarr",
        {"features": np.ones((n, 1024), np.float16), "coords": np.zeros((n, 2), np.int32)},
        attrs,
    )
    (work / f"{foreign}.zarr").rename(feats / f"{foreign}.zarr")

    run = wf.run_snakemake(work, "--cores", "2", *store_targets(wf, [truncated, deleted, foreign]))
    text = run.stdout + run.stderr
    store = f"results/features/{wf.ENCODER}/{{}}.zarr"
    for slide, why in [
        (truncated, r"is damaged: its chunk features/c/0/0 has \d+ bytes, \d+ were written"),
        (deleted, r"is damaged: its chunk features/c/0/0 is missing"),
        (foreign, r"was made for another request \(encoder 'resnet50_trunc', this run "
         rf"'{wf.ENCODER}'\)"),
    ]:  # fmt: skip
        line = rf"{re.escape(store.format(slide))} {why}: removed, it is recomputed"
        assert re.search(rf"^{line}$", text, re.M), text[-3000:]
    assert chaos.differences(e2e / "results", results) == {}


def test_a_fold_missing_a_file_is_not_complete(tmp_path):
    """`wsi-mil cv` resumes the folds that are complete; one whose model.json or model.pt is gone is
    trained again instead of being reused (predict and heatmaps need both)."""
    from pipeline.layout import FOLD_FILES, fold_complete

    fold = tmp_path / "fold0"
    fold.mkdir()
    for name in FOLD_FILES.values():
        (fold / name).write_text("x")
    assert fold_complete(fold)
    for name in FOLD_FILES.values():
        (fold / name).unlink()
        assert not fold_complete(fold), name
        (fold / name).write_text("x")
