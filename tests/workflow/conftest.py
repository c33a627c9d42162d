"""Fixtures of the workflow tests: run Snakemake on the repository's Snakefile, and one tiny real
run shared by every test that needs outputs (see cohort.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load_cohort():
    spec = importlib.util.spec_from_file_location(
        "wsi_mil_test_cohort", Path(__file__).with_name("cohort.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cohort = _load_cohort()


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
    return cohort.run_snakemake


@pytest.fixture(scope="session")
def job_counts():
    """``job_counts(stdout)``: the 'Job stats' table of a run as {rule: count}."""
    return parse_job_counts


@pytest.fixture(scope="session")
def wf():
    """The helpers of cohort.py (config writer, cohort maker, constants)."""
    return cohort


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> Path:
    """Workdir of the full workflow run on the tiny cohort (results/ inside)."""
    return cohort.e2e_run(cohort.cache_dir(tmp_path_factory))
