"""Validate a config file against the workflow schema; print one line per problem.

Beyond the schema it checks what is known before any slide is read: ``tiling.overlap`` below
``tiling.patch_size``, ``features.weights`` keys that are listed encoders, and registered encoder and
method names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HELP = "validate a config file (unknown keys, wrong types, unknown encoder/method names are errors)"
NAME = "check-config"


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="YAML config file, e.g. config.yaml")


def encoder_name_errors(config: dict, source: str) -> list[str]:
    """Encoder names in ``features.encoders`` that are not registered. Kept out of
    :func:`pipeline.config.config_errors` because the registry imports torch, and the workflow and
    the tiling stage validate configs without it."""
    from pipeline.encoders import list_encoders

    known = [spec.name for spec in list_encoders()]
    features = config.get("features")
    encoders = features.get("encoders") if isinstance(features, dict) else None
    return [
        f"{source}: 'features.encoders' has {name!r}: expected one of {', '.join(known)}"
        for name in (encoders if isinstance(encoders, list) else [])
        if name not in known
    ]


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
    problems = config_errors(data, source=str(path)) + encoder_name_errors(data, str(path))
    for line in problems:
        print(f"ERROR {line}", file=sys.stderr)
    if not problems:
        print(f"{path}: OK")
    return 1 if problems else 0
