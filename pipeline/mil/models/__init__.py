"""MIL model factory: one ``create_mil_model`` for every method, as timm's ``create_model`` does.

The method table itself (names, families, baselines, descriptions, implementing classes) lives in
:mod:`pipeline.methods`, which imports no torch so the workflow can read it; it is re-exported here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from pipeline.errors import PipelineError
from pipeline.methods import get_method, list_methods, method_info
from pipeline.settings import MILSettings

__all__ = [
    "create_mil_model",
    "list_methods",
    "method_info",
    "model_class",
    "model_keys",
    "model_kwargs",
]


def _resolve(target: str) -> type:
    module, cls = target.split(":")
    pkg = "pipeline.mil" if module in ("mhim", "msm") else "pipeline.mil.models"
    return getattr(importlib.import_module(f"{pkg}.{module}"), cls)


def model_class(name: str) -> type:
    """The class implementing method ``name`` (MHIM methods share one wrapper class)."""
    method_info(name)
    return _resolve(get_method(name).target)


# keyword arguments the registry fills from the settings; every other keyword is a model key
STANDARD_KWARGS = ("hidden_dim", "dropout")


def _keywords(cls: type) -> list[str]:
    """The keyword-only parameters of ``cls``'s constructor (its hyper-parameters)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def model_keys(name: str) -> list[str]:
    """Model-specific keys of method ``name`` (``embed_dims``, ``landmarks`` ...): what a ``key=value``
    override outside the schema may set. MHIM takes the keys of the baseline it wraps."""
    info = method_info(name)
    cls = model_class(info["baseline"] or name)
    family = {"msm": ("stages", "mask_ratio")}.get(info["family"], ())
    return [k for k in _keywords(cls) if k not in STANDARD_KWARGS and k not in family]


def model_kwargs(name: str, settings: MILSettings) -> dict[str, Any]:
    """The constructor keyword arguments of method ``name`` under ``settings``.

    ``hidden_dim`` and ``dropout``, the family's own section (``mil.mhim`` / ``mil.msm``) and the model keys
    of ``settings.model``; a model key the method does not take raises :class:`PipelineError`.
    """
    allowed = model_keys(name)
    unknown = [k for k in settings.model if k not in allowed]
    if unknown:
        raise PipelineError(
            name,
            f"unknown model key '{unknown[0]}'",
            "Model-specific keys: "
            + (", ".join(allowed) if allowed else "none")
            + "; standard keys are those of the mil config section.",
        )
    kwargs: dict[str, Any] = {"hidden_dim": settings.hidden_dim, "dropout": settings.dropout}
    family = method_info(name)["family"]
    if family in ("mhim", "msm"):
        kwargs.update(dataclasses.asdict(getattr(settings, family)))
    return {**kwargs, **settings.model}


def create_mil_model(
    name: str,
    in_dim: int,
    n_outputs: int,
    settings: MILSettings | Mapping[str, Any] | None = None,
    /,
    **kwargs: Any,
) -> nn.Module:
    """Build method ``name`` for ``in_dim``-d instances and ``n_outputs`` outputs (timm's ``create_model``).

    The constructor's keyword arguments come from ``settings`` (typed settings, or a ``mil`` section
    mapping that the schema validates and fills; None = the schema defaults) via :func:`model_kwargs`;
    explicit ``kwargs`` override them. Every bad key or value raises :class:`PipelineError`.
    """
    info = method_info(name)
    if int(in_dim) < 1 or int(n_outputs) < 1:
        raise PipelineError(
            f"method '{name}'", f"in_dim and n_outputs must be >= 1, got {in_dim}, {n_outputs}"
        )
    if not isinstance(settings, MILSettings):
        settings = MILSettings.from_mapping(settings, source=f"method '{name}'")
    cls = _resolve(get_method(name).target)
    built = {**model_kwargs(name, settings), **kwargs}
    if info["family"] == "mhim":
        return cls(info["baseline"], int(in_dim), int(n_outputs), **built)
    return cls(int(in_dim), int(n_outputs), **built)
