"""The shipped config is valid, and each kind of mistake gives one line naming key, value and expectation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG, config_errors, load_config, section

ROOT = Path(__file__).resolve().parents[2]


def shipped() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_shipped_config_is_valid_and_defaults_are_filled():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg["tiling"]["patch_size"] == 256
    assert cfg["tiling"]["target_mpp"] == 0.5
    assert cfg["mil"]["mhim"]["temperature"] == 0.1
    # a section missing from the file is filled from the schema defaults
    assert section(None, "features")["dtype"] == "float16"


@pytest.mark.parametrize("name", ["slides", "tiling", "features", "mil"])
def test_schema_defaults_equal_documented_config_values(name):
    """config.yaml documents the defaults; the schema must not silently disagree with it."""
    assert section(None, name) == shipped()[name]


def broken(path: list, value) -> dict:
    cfg = shipped()
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (broken(["tiling", "foo"], 1), "unknown key 'tiling.foo'"),
        (broken(["tiling", "min_tissue"], "abc"), "'tiling.min_tissue' = 'abc': expected number"),
        (broken(["tiling", "min_tissue"], 1.5), "'tiling.min_tissue' = 1.5: expected a value <= 1"),
        (
            broken(["features", "device"], "tpu"),
            "'features.device' = 'tpu': expected one of 'auto', 'cpu', 'cuda'",
        ),
        (broken(["mil", "folds"], 1), "'mil.folds' = 1: expected a value >= 2"),
        (broken(["mil", "mhim", "instance_score"], "max"), "'mil.mhim.instance_score' = 'max'"),
        (
            broken(["tasks"], [{"name": "a", "type": "regression", "table": "t.csv"}]),
            "'tasks.0.type' = 'regression'",
        ),
        (
            broken(["tasks"], [{"name": "a", "type": "survival"}]),
            "missing required key 'tasks.0.table'",
        ),
        (
            broken(["slides", "default_mpp"], "0.5um"),
            "'slides.default_mpp' = '0.5um': expected number or null",
        ),
        (broken(["unknown_top"], True), "unknown key 'unknown_top'"),
    ],
)
def test_broken_config_gives_one_clear_line(cfg, expected):
    problems = config_errors(copy.deepcopy(cfg), source="cfg.yaml")
    assert len(problems) == 1, problems
    assert problems[0].startswith("cfg.yaml: ")
    assert expected in problems[0]


def test_duplicate_task_names_are_rejected():
    cfg = broken(["tasks"], [{"name": "a", "type": "survival", "table": "s.csv"}] * 2)
    assert config_errors(cfg) == ["config: task name 'a' is used twice; task names must be unique"]


def test_check_config_command(tmp_path):
    good = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(DEFAULT_CONFIG)],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip().endswith(": OK")

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken(["features", "batch_size"], 0)))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"ERROR {bad}: 'features.batch_size' = 0: expected a value >= 1"]


def test_check_config_on_invalid_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiling: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"ERROR {bad}: not valid YAML")
