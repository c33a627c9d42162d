"""Project conventions a newcomer relies on: CI runs the README's test command, the CLI is wired."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> list[str]:
    """Command lines of the first fenced shell block under a README heading."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)^```\w*\n(.*?)^```", text, re.S | re.M)
    assert match, f"README has no code block under '{heading}'"
    return [
        ln.strip() for ln in match.group(2).splitlines() if ln.strip() and not ln.startswith("#")
    ]


def ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    skip = ("#", "set ", "cd ")
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(skip)]


def test_ci_runs_exactly_the_readme_test_command():
    assert ci_commands() == readme_block("Run the tests")


def test_readme_demo_command_is_make_demo():
    assert readme_block("Run the demo") == ["make demo"]


def test_version_command():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"wsi-mil {pipeline.__version__}"


def test_gitignore_keeps_generated_outputs_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    for entry in (".venv/", "/results/", "/demo/", "*.zarr/", ".snakemake/"):
        assert entry in ignored
