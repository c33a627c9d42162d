"""One tiny synthetic cohort and one real workflow run, shared by the workflow and SLURM tests.

Feature extraction dominates the cost of a run, so the run happens once per pytest session and is
cached under pytest's base temp folder; tests that need their own copy take ``copy_run``
(``cp -a`` keeps mtimes and Snakemake's metadata, so the copy is as up to date as the original).
Loaded by path from tests/conftest.py (fixtures ``wf`` and ``e2e``).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
ENCODER = "efficientnet_lite0"
N_SLIDES = 8  # 6 cases: enough for 2 stratified folds with a validation part
BROKEN = "case000_broken"  # garbage bytes named .svs: the slide that fails


def cache_dir(tmp_path_factory) -> Path:
    """Where the shared run lives: this session's temp folder, or $WSI_MIL_TEST_CACHE when set
    (a developer's shortcut to reuse one finished run across pytest sessions)."""
    cache = os.environ.get("WSI_MIL_TEST_CACHE")
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        return Path(cache)
    return tmp_path_factory.getbasetemp()


# tiny bags train no faster on 2 threads: run two training jobs side by side instead
FAST = ("--set-threads", "train=1")


def snakemake_env(slurm: bool = False) -> dict[str, str]:
    """The test's environment with this interpreter's bin first (so rules find `wsi-mil`).

    Off SLURM, ``SLURM_CONF=/dev/null``: the SLURM plugin runs `scontrol show config` when
    Snakemake starts, and where the SLURM client is installed but no controller runs (a machine
    that ran the SLURM test) that takes 9 s per start; an empty config makes it fail at once.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    if not slurm:
        env["SLURM_CONF"] = os.devnull
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "-d",
        str(workdir),
    ] + [str(a) for a in args]


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600):
    """Run the repository's workflow in ``workdir``; on failure the error shows its output."""
    proc = subprocess.run(
        snakemake_cmd(workdir, *args),
        capture_output=True,
        text=True,
        env=snakemake_env(),
        timeout=timeout,
        cwd=workdir,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def make_tiny_cohort(base: Path) -> Path:
    """8 small synthetic slides (6 cases) plus a corrupt third slide of case000 in the labels (its
    case keeps its good slide, so every fold's parts still have bags)."""
    from pipeline.synth import make_cohort

    cohort = base / "cohort"
    if (cohort / "cohort.json").exists() and (cohort / "slides" / f"{BROKEN}.svs").exists():
        return cohort
    # tumour large enough that positive slides have whole tumour patches (heatmap localisation test)
    make_cohort(
        cohort,
        N_SLIDES,
        seed=0,
        size_scale=0.4,
        censored_fraction=0.3,
        tumor_fraction_range=(0.3, 0.5),
    )
    (cohort / "slides" / f"{BROKEN}.svs").write_bytes(b"II*\x00" + bytes(range(256)) * 64)
    with open(cohort / "labels.csv", newline="") as handle:
        label = next(row["label"] for row in csv.DictReader(handle) if row["case_id"] == "case000")
    with open(cohort / "labels.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([BROKEN, "case000", label])
    return cohort


def workflow_config(cohort: Path, **sections) -> dict:
    """A config for the tiny cohort: both task types, AB-MIL and MHIM(AB-MIL), 2 folds, 20 epochs;
    heatmaps on (the default), with the cohort's tumour masks for the classification task."""
    config = {
        "slides_dir": str(cohort / "slides"),
        "results_dir": "results",
        "tasks": [
            {
                "name": "tumour",
                "type": "classification",
                "table": str(cohort / "labels.csv"),
                "masks": str(cohort / "masks" / "masks.json"),  # localisation of the heatmaps
            },
            {
                "name": "survival",
                "type": "survival",
                "table": str(cohort / "survival.csv"),
                "slides_table": str(cohort / "labels.csv"),
            },
        ],
        "features": {"encoders": [ENCODER], "batch_size": 64, "workers": 0, "device": "cpu"},
        # 20 epochs of tiny bags cost seconds; 2 left AB-MIL's attention untrained (uniform). 6 cases
        # in 2 folds leave 1-2 per class to train on: too few for the default inner selection
        "mil": {
            "methods": ["abmil", "mhim_abmil"],
            "folds": 2,
            "epochs": 20,
            "patience": 10,
            "selection": "holdout",
        },
    }
    config.update(sections)
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def e2e_run(base: Path) -> Path:
    """The full workflow on the tiny cohort with --keep-going (once per session); its workdir."""
    workdir = base / "e2e"
    done = workdir / "done.marker"
    if done.exists():
        return workdir
    cohort = make_tiny_cohort(base)
    if workdir.exists():
        shutil.rmtree(workdir)
    write_config(workdir, workflow_config(cohort))
    proc = run_snakemake(workdir, "--cores", "2", "--keep-going", *FAST, timeout=1800)
    (workdir / "snakemake.out").write_text(proc.stdout + proc.stderr)
    done.write_text("ok\n")
    return workdir


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run, mtimes and Snakemake metadata kept."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst
