"""Fixtures of the SLURM test: the tiny cohort and run shared with tests/workflow (cohort.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load_cohort():
    path = Path(__file__).resolve().parents[1] / "workflow" / "cohort.py"
    spec = importlib.util.spec_from_file_location("wsi_mil_test_cohort", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cohort = _load_cohort()


@pytest.fixture(scope="session")
def wf():
    return cohort


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> Path:
    """Workdir of the full workflow run on the tiny cohort (shared with tests/workflow)."""
    return cohort.e2e_run(cohort.cache_dir(tmp_path_factory))
