"""Shared fixtures for the tiling tests: real slide paths, synthetic slides with ground truth, CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

SLIDES = Path(__file__).resolve().parents[1] / "data" / "slides"


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return SLIDES


@pytest.fixture(scope="session")
def tiling_cfg() -> dict:
    from pipeline.config import section

    return section(None, "tiling")


@pytest.fixture
def cli(capsys):
    """Run ``wsi-mil ARGS`` in-process; returns (exit code, stderr lines that are not log records)."""
    from pipeline.cli import main

    def run(*args: str) -> tuple[int, list[str]]:
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        return code, [line for line in err.splitlines() if line.startswith("ERROR ")]

    return run


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Two 40× and two 20× synthetic slides (seeds 0, 1) with their ground-truth tissue masks."""
    from pipeline.synth import write_synthetic_slide

    root = tmp_path_factory.mktemp("synthetic")
    sizes = {40: (6144, 4608, 0.25), 20: (3072, 2304, 0.5)}
    out = {}
    for mag, (w, h, mpp) in sizes.items():
        out[mag] = [
            write_synthetic_slide(
                root / f"synth{mag}x_{seed}.svs",
                width=w,
                height=h,
                mpp=mpp,
                seed=seed,
                tumor_fraction=0.2,
            )
            for seed in (0, 1)
        ]
    return out
