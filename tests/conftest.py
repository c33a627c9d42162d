"""Fixtures shared across suites: the tiny workflow cohort (tests/workflow/cohort.py) and its one real
run, used by tests/workflow and tests/slurm."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load_cohort():
    path = Path(__file__).resolve().parent / "workflow" / "cohort.py"
    spec = importlib.util.spec_from_file_location("wsi_mil_test_cohort", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def wf():
    """The helpers of cohort.py (config writer, cohort maker, snakemake runner, constants)."""
    return _load_cohort()


@pytest.fixture(scope="session")
def e2e(wf, tmp_path_factory) -> Path:
    """Workdir of the full workflow run on the tiny cohort (results/ inside), made once per session."""
    return wf.e2e_run(wf.cache_dir(tmp_path_factory))
