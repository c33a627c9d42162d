"""MIL model registry: one ``create_mil_model`` for every method, as timm's ``create_model`` does.

``list_methods()`` feeds ``wsi-mil methods``; ``baseline`` names the method whose checkpoint (trained on
the same fold) initialises an MHIM teacher, so the workflow knows what to train first.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.methods import get_method, list_methods, method_info

__all__ = ["create_mil_model", "list_methods", "method_info", "model_class"]


def _resolve(target: str) -> type:
    module, cls = target.split(":")
    pkg = "pipeline.mil" if module in ("mhim", "msm") else "pipeline.mil.models"
    return getattr(importlib.import_module(f"{pkg}.{module}"), cls)


def model_class(name: str) -> type:
    """The class implementing method ``name`` (MHIM methods share one wrapper class)."""
    method_info(name)
    return _resolve(get_method(name).target)


def create_mil_model(
    name: str, in_dim: int, n_outputs: int, cfg: dict[str, Any] | None = None
) -> nn.Module:
    """Build method ``name`` for ``in_dim``-d instances and ``n_outputs`` outputs.

    ``cfg`` is the ``mil`` config section (missing keys take the schema defaults) plus optional
    model-specific keys documented in each model's module; unknown keys raise :class:`PipelineError`.
    """
    info = method_info(name)
    if int(in_dim) < 1 or int(n_outputs) < 1:
        raise PipelineError(
            f"method '{name}'", f"in_dim and n_outputs must be >= 1, got {in_dim}, {n_outputs}"
        )
    cls = _resolve(get_method(name).target)
    if info["family"] == "mhim":
        return cls(info["baseline"], int(in_dim), int(n_outputs), cfg)
    return cls(int(in_dim), int(n_outputs), cfg)
