"""``key=value`` overrides from the command line (``epochs=50 mhim.rhsm_ratio=0.01``): parse and apply.

Values are read as YAML, so ``[256,128,64]``, ``true`` and ``5e-4`` arrive as a list, a bool and a number.
Kept apart from the settings types so any command can take overrides the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import PipelineError


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["epochs=5", "mhim.rhsm_ratio=0.01", "embed_dims=[256,128,64]"]`` → dict (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(
                f"override '{item}'",
                "expected key=value",
                "Example: epochs=50 mhim.rhsm_ratio=0.01",
            )
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-4" as text
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def apply_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with dotted overrides applied (``mhim.rhsm_ratio`` sets ``cfg["mhim"]["rhsm_ratio"]``), as a new dict."""
    out = copy.deepcopy(dict(cfg))
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out
