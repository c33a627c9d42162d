"""Shared helpers for the workflow tests: run Snakemake on the repository's Snakefile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"


def snakemake_env() -> dict[str, str]:
    """The test's environment with this interpreter's bin first (so rules find `wsi-mil`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 600):
    """Run snakemake on the repository's Snakefile in ``workdir``; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "-d", str(workdir)]
    proc = subprocess.run(
        cmd + list(args),
        capture_output=True,
        text=True,
        env=snakemake_env(),
        timeout=timeout,
        cwd=workdir,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def parse_job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake (dry) run as {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="session")
def snakemake():
    """``snakemake(workdir, *args, check=True)``: run the repository's workflow in ``workdir``."""
    return run_snakemake


@pytest.fixture(scope="session")
def job_counts():
    """``job_counts(stdout)``: the 'Job stats' table of a run as {rule: count}."""
    return parse_job_counts
