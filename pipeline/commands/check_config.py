"""Validate a config file against the workflow schema; print one line per problem.

Beyond the schema it checks what is known before any slide is read: ``tiling.overlap`` below
``tiling.patch_size``, ``features.weights`` keys that are listed encoders, and registered encoder and
method names (encoder names are the schema's enum, kept equal to the registry by
tests/features/test_encoders.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HELP = "validate a config file (unknown keys, wrong types, unknown encoder/method names are errors)"
NAME = "check-config"


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="YAML config file, e.g. config.yaml")


def run(args) -> int:
    from pipeline.config import config_errors

    path: Path = args.config
    if not path.exists():
        print(f"ERROR {path}: config file not found.", file=sys.stderr)
        return 1
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        print(f"ERROR {path}: not valid YAML ({err}).", file=sys.stderr)
        return 1
    if not isinstance(data, dict):
        print(f"ERROR {path}: config must be a mapping of keys to values.", file=sys.stderr)
        return 1
    problems = config_errors(data, source=str(path))
    for line in problems:
        print(f"ERROR {line}", file=sys.stderr)
    if not problems:
        print(f"{path}: OK")
    return 1 if problems else 0
