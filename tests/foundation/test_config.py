"""The shipped config is valid, and each kind of mistake gives one line naming key, value and expectation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import DEFAULT_CONFIG, config_errors, load_config, section
from pipeline.encoders import list_encoders
from pipeline.errors import ConfigError

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


def _check_config(tmp_path, cfg: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "check-config", str(path)],
        capture_output=True,
        text=True,
    )


def test_overlap_not_below_patch_size_is_rejected_at_validation(tmp_path):
    for overlap in (256, 300):
        problems = config_errors(broken(["tiling", "overlap"], overlap), source="cfg.yaml")
        assert problems == [
            f"cfg.yaml: 'tiling.overlap' = {overlap}: expected a value < tiling.patch_size (256); "
            "neighbouring patches cannot share a whole patch"
        ]
    assert config_errors(broken(["tiling", "overlap"], 255)) == []
    # commands stop with one line before reading any slide
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(broken(["tiling", "overlap"], 256)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "\n" not in info.value.line()
    assert info.value.line().startswith(f"ERROR {path}: invalid configuration: 'tiling.overlap'")


def test_check_config_rejects_misspelt_weights_key_and_unknown_names(tmp_path):
    cfg = shipped()
    cfg["features"]["encoders"] = ["efficientnet_lite0"]
    cfg["features"]["weights"] = {"efficientnet-lite0": "/w/lite0.pth"}
    result = _check_config(tmp_path, cfg)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ERROR {tmp_path / 'cfg.yaml'}: 'features.weights.efficientnet-lite0': not an encoder "
        f"name (known: {', '.join(s.name for s in list_encoders())}); the weights would never be used"
    ]
    cfg["features"]["weights"] = {"uni": "/w/uni.bin"}  # spelt right, but uni does not run here
    assert _check_config(tmp_path, cfg).stderr.strip().splitlines() == [
        f"ERROR {tmp_path / 'cfg.yaml'}: 'features.weights.uni': not one of "
        "features.encoders (efficientnet_lite0); the weights would never be used"
    ]
    cfg["features"]["weights"] = {}
    cfg["features"]["encoders"] = ["efficientnet_lite0;touch X;true"]
    cfg["mil"]["methods"] = ["abmil", "ab-mil"]
    lines = _check_config(tmp_path, cfg).stderr.strip().splitlines()
    assert len(lines) == 2
    (methods,) = [line for line in lines if "'mil.methods'" in line]
    (encoders,) = [line for line in lines if "'features.encoders" in line]
    assert "'mil.methods' has 'ab-mil': expected one of abmil, abmil_gated" in methods
    assert "'features.encoders.0' = 'efficientnet_lite0;touch X;true': expected one of" in encoders
    assert "efficientnet_lite0" in encoders.rsplit("expected one of", 1)[1]


def test_configuration_error_is_not_recorded_as_a_failed_slide(tmp_path, capsys):
    """A slide without MPP metadata and an implausible slides.default_mpp: the settings are wrong
    for every slide, so `tile --record-failure` stops with one line instead of marking it failed."""
    from pipeline.cli import main

    slide = ROOT / "tests" / "data" / "slides" / "kidney-48-5.tif"  # no MPP in its metadata
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(broken(["slides", "default_mpp"], 50.0)))
    out = tmp_path / "k.zarr"
    code = main(["tile", str(slide), "-o", str(out), "--config", str(cfg), "--record-failure"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR")]
    assert code == 1 and not out.exists() and list(tmp_path.iterdir()) == [cfg]
    assert errors == [
        f"ERROR {slide}: slides.default_mpp gives 50.0 µm/px, outside the plausible 0.1-2.0 µm/px. "
        "Give the pixel size in micrometres per pixel (0.25 for 40x, 0.5 for 20x)."
    ]
