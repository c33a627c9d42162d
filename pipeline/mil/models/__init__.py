"""MIL model registry: one ``create_mil_model`` for every method, as timm's ``create_model`` does.

``list_methods()`` feeds ``wsi-mil methods``; ``baseline`` names the method whose checkpoint (trained on
the same fold) initialises an MHIM teacher, so the workflow knows what to train first.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from pipeline.errors import PipelineError

_MHIM_NOTE = (
    " Teacher = the {base} baseline of the same fold, EMA-updated; each training bag: RHSM masks a random"
    " half of the top-2*rhsm_ratio instances by the teacher's class-aware instance probability"
    " (instance_score=attention gives MHIM v1), cosine-decayed; random_mask_ratio is the fraction of the"
    " remaining instances MASKED (default 0.8; the public code's merge_ratio is the fraction kept); GRN"
    " global queries summarise the randomly masked instances; loss = task + consistency_weight *"
    " consistency with the teacher. Inference: student only, all instances (+ GRN tokens when"
    " grn_at_inference). Switches: mil.mhim.*; model keys as for {base}."
)

# name -> (module:class, family, baseline, description)
_REGISTRY: dict[str, tuple[str, str, str | None, str]] = {
    "abmil": (
        "abmil:ABMIL",
        "abmil",
        None,
        "AB-MIL (Ilse 2018): attention pooling (tanh) over projected instances. Model keys: embed_dims"
        " (e.g. [256,128,64] for Ilse's MI-Net projection), attention_dim, activation.",
    ),
    "abmil_gated": (
        "abmil:GatedABMIL",
        "abmil",
        None,
        "AB-MIL with gated attention (tanh * sigmoid). Model keys as abmil.",
    ),
    "transmil": (
        "transmil:TransMIL",
        "transmil",
        None,
        "TransMIL (Shao 2021): CLS token, 2 Nystrom self-attention layers, PPEG positional conv."
        " Model keys: heads, landmarks, pinv_iterations, attention_dropout, ppeg, activation.",
    ),
    "dsmil": (
        "dsmil:DSMIL",
        "dsmil",
        None,
        "DSMIL (Li 2021): instance classifier, critical-instance attention, Conv1d bag classifier;"
        " loss on bag and max-instance logits. Model keys: query_dim, activation, loss_mix.",
    ),
    "mhim_abmil": (
        "mhim:MHIM",
        "mhim",
        "abmil",
        "MHIM-MIL v2 around AB-MIL." + _MHIM_NOTE.format(base="abmil"),
    ),
    "mhim_transmil": (
        "mhim:MHIM",
        "mhim",
        "transmil",
        "MHIM-MIL v2 around TransMIL." + _MHIM_NOTE.format(base="transmil"),
    ),
    "mhim_dsmil": (
        "mhim:MHIM",
        "mhim",
        "dsmil",
        "MHIM-MIL v2 around DSMIL (instance score = its instance classifier)."
        + _MHIM_NOTE.format(base="dsmil"),
    ),
    "msm": (
        "msm:MSMMIL",
        "msm",
        None,
        "MSM-MIL (interpretation of Wang et al.'s abstract): gated-attention stages; each stage masks"
        " its top mask_ratio of the instances not yet masked and the next stage attends to the rest;"
        " stage embeddings are attention-pooled for the prediction. Switches: mil.msm.stages,"
        " mil.msm.mask_ratio; model keys: attention_dim, activation.",
    ),
}


def _info(name: str) -> dict[str, Any]:
    _, family, baseline, description = _REGISTRY[name]
    return {"name": name, "description": description, "baseline": baseline, "family": family}


def list_methods() -> list[dict[str, Any]]:
    """Every method as ``{name, description, baseline, family}``."""
    return [_info(n) for n in _REGISTRY]


def method_info(name: str) -> dict[str, Any]:
    """One method's ``{name, description, baseline, family}``; unknown names raise :class:`PipelineError`."""
    if name not in _REGISTRY:
        raise PipelineError(
            f"method '{name}'",
            "unknown MIL method",
            f"Valid methods: {', '.join(_REGISTRY)} (see `wsi-mil methods`).",
        )
    return _info(name)


def _resolve(target: str) -> type:
    module, cls = target.split(":")
    pkg = "pipeline.mil" if module in ("mhim", "msm") else "pipeline.mil.models"
    return getattr(importlib.import_module(f"{pkg}.{module}"), cls)


def model_class(name: str) -> type:
    """The class implementing method ``name`` (MHIM methods share one wrapper class)."""
    method_info(name)
    return _resolve(_REGISTRY[name][0])


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
    cls = _resolve(_REGISTRY[name][0])
    if info["family"] == "mhim":
        return cls(info["baseline"], int(in_dim), int(n_outputs), cfg)
    return cls(int(in_dim), int(n_outputs), cfg)
