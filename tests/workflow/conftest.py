"""Fixtures of the workflow tests: run Snakemake on the repository's Snakefile, and read its job counts.
The cohort helpers (``wf``) and the shared tiny real run (``e2e``) come from tests/conftest.py."""

from __future__ import annotations

import pytest


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
def snakemake(wf):
    """``snakemake(workdir, *args, check=True)``: run the repository's workflow in ``workdir``."""
    return wf.run_snakemake


@pytest.fixture(scope="session")
def job_counts():
    """``job_counts(stdout)``: the 'Job stats' table of a run as {rule: count}."""
    return parse_job_counts
