"""The workflow through a real SLURM cluster (slurmctld, slurmd, slurmdbd + MariaDB, munge) started
on localhost by tests/slurm/local-slurm.sh, with the repository's SLURM profile.

Every rule runs as a SLURM job except the light local rules; the extraction jobs ask for `gpu=1`
and are scheduled on the simulated GPU (sacct shows gres/gpu=1). Needs root (apt packages,
daemons); every daemon the script starts is stopped by pid afterwards, also on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.store import read_array

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = HERE / "local-slurm.sh"
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
NEW_SLIDES = 1  # slides the cluster tiles and embeds itself; the others come from the shared run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: installs Debian packages and starts SLURM daemons"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "needs apt-get (Debian) to install slurm-wlm, slurmdbd, munge and MariaDB"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "local-slurm" not in conf.read_text().splitlines()[0]:
        return "this machine has its own SLURM configuration; the test will not replace it"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node cluster (4 CPUs, 2 simulated GPUs, accounting); stopped by pid afterwards."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm-state")
    env = dict(os.environ)
    env.update(SLURM_LOCAL_DIR=str(state), SLURM_LOCAL_CPUS="4", SLURM_LOCAL_GPUS="2")
    try:
        start = subprocess.run(
            ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600
        )
        assert start.returncode == 0, f"cluster did not start:\n{start.stdout}\n{start.stderr}"
        yield env
    finally:
        stop = subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120
        )
        started = (state / "started").exists()
        assert stop.returncode == 0 and not started, stop.stderr


def site_profile(workdir: Path) -> Path:
    """The repository's profile with its placeholders filled in for the local cluster."""
    text = PROFILE.read_text()
    assert "CHANGE_ME_partition" in text and "CHANGE_ME_account" in text
    text = text.replace("CHANGE_ME_gpu_partition", "debug").replace("CHANGE_ME_partition", "debug")
    text = text.replace("CHANGE_ME_account", "root")
    profile = workdir / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(text)
    return profile


def test_workflow_runs_through_slurm_with_the_repository_profile(cluster, e2e, wf, tmp_path):
    workdir = tmp_path / "run"
    cohort = Path(yaml.safe_load((e2e / "config.yaml").read_text())["slides_dir"]).parent
    config = wf.workflow_config(cohort)
    config["tasks"] = config["tasks"][:1]  # classification only: the survival task adds no rule
    wf.write_config(workdir, config)
    # the shared run's tiles and features for all but NEW_SLIDES slides: the cluster does the rest
    slides = sorted(p.name[: -len(".zarr")] for p in (e2e / "results" / "tiles").glob("*.zarr"))
    fresh = [s for s in slides if s != wf.BROKEN][:NEW_SLIDES]
    for sid in slides:
        if sid in fresh:
            continue
        for rel in (f"tiles/{sid}.zarr", f"qc/{sid}.png", f"features/{wf.ENCODER}/{sid}.zarr"):
            dst = workdir / "results" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", str(e2e / "results" / rel), str(dst)], check=True)
    proc = subprocess.run(
        wf.snakemake_cmd(
            workdir,
            "--workflow-profile",
            site_profile(tmp_path),
            "--jobs",
            "4",
            "--local-cores",
            "2",
            *wf.FAST,
            "--slurm-init-seconds-before-status-checks",
            "2",
            "--slurm-logdir",
            tmp_path / "slurm-logs",
        ),
        capture_output=True,
        text=True,
        env=wf.snakemake_env(slurm=True),
        cwd=workdir,
        timeout=900,
    )
    (tmp_path / "snakemake.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    results = workdir / "results"

    # every rule that is not local ran as a SLURM job; extraction got the (simulated) GPU
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobName,State,AllocTRES,Comment", "-S", "now-1hour"],
        capture_output=True,
        text=True,
        env=cluster,
        check=True,
    ).stdout
    jobs = [line.split("|") for line in acct.splitlines() if line.strip()]
    by_rule: dict[str, list[list[str]]] = {}
    for job in jobs:
        match = re.match(r"rule_(.+?)(_wildcards_|$)", job[3])
        by_rule.setdefault(match.group(1) if match else "?", []).append(job)
    assert len(by_rule.get("tile", [])) == NEW_SLIDES, acct
    # the new slides are embedded by one group job (one GPU), then each store is moved into place
    assert len(by_rule.get("extract_batch", [])) == 1, acct
    assert all("gres/gpu=1" in job[2] for job in by_rule["extract_batch"]), acct
    assert len(by_rule.get("extract", [])) == NEW_SLIDES, acct
    assert not any("gpu" in job[2] for job in by_rule["extract"]), acct
    folds = config["mil"]["folds"]
    assert len(by_rule.get("train", [])) == 2 * folds  # the baseline and its MHIM student
    assert all(job[1] == "COMPLETED" for job in jobs), acct

    # the cluster's outputs are complete and valid
    for sid in fresh:
        features = read_array(results / "features" / wf.ENCODER / f"{sid}.zarr", "features")
        coords = read_array(results / "tiles" / f"{sid}.zarr", "coords")
        assert len(coords) > 0
        assert features.shape == (len(coords), 1280) and features.dtype == np.float16
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary["method"]) == ["abmil", "mhim_abmil"]
    assert summary["auc_mean"].between(0, 1).all()
    assert (results / "report" / "index.html").stat().st_size > 0
