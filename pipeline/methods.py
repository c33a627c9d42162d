"""The MIL method table: every method's name, family, baseline, description and implementing class.

Importable without torch, so the Snakemake workflow (which parses once per cluster job) plans the
jobs from this table rather than from a copy: a method with a ``baseline`` (MHIM-MIL) needs that
baseline trained on the same fold first, because its checkpoint initialises the teacher.
:func:`pipeline.mil.models.create_mil_model` builds a method from its ``target`` (``module:Class``).
How each method differs from its paper and public code: docs/architecture.md, "Method notes".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """One MIL method as ``wsi-mil methods`` lists it."""

    name: str
    target: str  # "module:Class" below pipeline.mil (mhim, msm) or pipeline.mil.models
    family: str  # abmil, transmil, dsmil, mhim, msm, reference
    baseline: str | None  # the method whose same-fold checkpoint initialises the teacher
    description: str


_MHIM_NOTE = (
    " Teacher = the {base} baseline of the same fold, EMA-updated; each training bag: RHSM masks a random"
    " half of the top-2*rhsm_ratio instances by the teacher's class-aware instance probability"
    " (instance_score=attention gives MHIM v1), cosine-decayed; random_mask_ratio is the fraction of the"
    " remaining instances MASKED (default 0.8; the public code's merge_ratio is the fraction kept); GRN"
    " global queries summarise the randomly masked instances; loss = task + consistency_weight *"
    " consistency with the teacher. Inference: student only, all instances (+ GRN tokens when"
    " grn_at_inference). Switches: mil.mhim.*; model keys as for {base}."
)

_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "abmil",
        "abmil:ABMIL",
        "abmil",
        None,
        "AB-MIL (Ilse 2018): attention pooling (tanh) over projected instances. Model keys: embed_dims"
        " (e.g. [256,128,64] for Ilse's MI-Net projection), attention_dim, activation, zero_head"
        " (linear head starts at 0; default false, as published).",
    ),
    MethodSpec(
        "abmil_gated",
        "abmil:GatedABMIL",
        "abmil",
        None,
        "AB-MIL with gated attention (tanh * sigmoid). Model keys as abmil.",
    ),
    MethodSpec(
        "transmil",
        "transmil:TransMIL",
        "transmil",
        None,
        "TransMIL (Shao 2021): CLS token, 2 Nystrom self-attention layers, PPEG positional conv."
        " Model keys: heads, landmarks, pinv_iterations, attention_dropout, ppeg, activation.",
    ),
    MethodSpec(
        "dsmil",
        "dsmil:DSMIL",
        "dsmil",
        None,
        "DSMIL (Li 2021): instance classifier, critical-instance attention, Conv1d bag classifier;"
        " loss on bag and max-instance logits. Model keys: query_dim, activation, loss_mix.",
    ),
    MethodSpec(
        "meanpool",
        "pooling:MeanPoolMIL",
        "reference",
        None,
        "Reference baseline: mean of the instance features, standardised by running statistics -> one"
        " linear layer (logistic regression / the survival head on bag means). A MIL method below it has"
        " learnt nothing a linear model on bag means could not. No model keys.",
    ),
    MethodSpec(
        "maxpool",
        "pooling:MaxPoolMIL",
        "reference",
        None,
        "Reference baseline: per-feature maximum over instances -> one linear layer (sparse-evidence"
        " counterpart of meanpool). No model keys.",
    ),
    MethodSpec(
        "abmil_std",
        "pooling:StandardizedABMIL",
        "abmil",
        None,
        "AB-MIL that reaches its mean-pool reference on dense evidence and beats it on sparse: the"
        " attention-pooled embedding, concatenated with the mean of the projected instances"
        " (mean_skip), is standardised by running statistics before a linear head that starts at 0"
        " (zero_head). Plain AB-MIL fits noise first where the evidence is a weak shift in many"
        " instances (BENCHMARKS.md, issue 17). Model keys as abmil, plus mean_skip (default true);"
        " zero_head defaults to true here.",
    ),
    MethodSpec(
        "mhim_abmil",
        "mhim:MHIM",
        "mhim",
        "abmil",
        "MHIM-MIL v2 around AB-MIL." + _MHIM_NOTE.format(base="abmil"),
    ),
    MethodSpec(
        "mhim_transmil",
        "mhim:MHIM",
        "mhim",
        "transmil",
        "MHIM-MIL v2 around TransMIL." + _MHIM_NOTE.format(base="transmil"),
    ),
    MethodSpec(
        "mhim_dsmil",
        "mhim:MHIM",
        "mhim",
        "dsmil",
        "MHIM-MIL v2 around DSMIL (instance score = its instance classifier)."
        + _MHIM_NOTE.format(base="dsmil"),
    ),
    MethodSpec(
        "msm",
        "msm:MSMMIL",
        "msm",
        None,
        "MSM-MIL (interpretation of Wang et al.'s abstract): gated-attention stages; each stage masks"
        " its top mask_ratio of the instances not yet masked and the next stage attends to the rest;"
        " stage embeddings are attention-pooled for the prediction. Switches: mil.msm.stages,"
        " mil.msm.mask_ratio; model keys: attention_dim, activation.",
    ),
)

# name -> spec, in the order `wsi-mil methods` lists them
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


# what `wsi-mil methods` prints of a spec: every field a string (baseline None for a baseline)
MethodInfo = dict[str, str | None]


def _info(spec: MethodSpec) -> MethodInfo:
    info = asdict(spec)
    info.pop("target")
    return info


def list_methods() -> list[MethodInfo]:
    """Every method as ``{name, family, baseline, description}``."""
    return [_info(spec) for spec in METHODS.values()]


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name is a :class:`ConfigError` listing the valid ones."""
    if name not in METHODS:
        raise ConfigError(
            f"method '{name}'",
            "unknown MIL method",
            f"Valid methods: {', '.join(METHODS)} (see `wsi-mil methods`).",
        )
    return METHODS[name]


def method_info(name: str) -> MethodInfo:
    """One method's ``{name, family, baseline, description}``; unknown names raise :class:`ConfigError`."""
    return _info(get_method(name))


def switch_section(name: str) -> str | None:
    """The ``mil`` section holding the switches a variant of method ``name`` may override (or None)."""
    return {"mhim": "mhim", "msm": "msm"}.get(get_method(name).family)


def baseline_of(name: str) -> str | None:
    """The method whose same-fold checkpoint initialises ``name``'s teacher (None when it has none)."""
    return get_method(name).baseline


def base_method(name: str, variants: Mapping[str, Any] | None = None) -> str:
    """The method a named variant (``mil.variants``) is built from; a method is its own base."""
    variants = variants or {}
    return str(variants[name]["method"]) if name in variants else name


def teacher_of(name: str, variants: Mapping[str, Any] | None = None) -> str | None:
    """The baseline whose same-fold checkpoint initialises the teacher of a method or variant: a
    variant shares its base method's, so a method and its ablations start from the same checkpoints."""
    return baseline_of(base_method(name, variants))


def training_order(
    names: Sequence[str], variants: Mapping[str, Any] | None = None, reference: str | None = None
) -> list[str]:
    """Everything to train for ``names`` compared with ``reference``, each once, teachers first:
    the teachers of ``names`` (and of the reference), the reference, then ``names``. The workflow's
    trained methods and `wsi-mil cv`'s run order are both this list."""
    everything = [*names, *([reference] if reference else [])]
    teachers = [t for t in (teacher_of(n, variants) for n in everything) if t]
    return list(dict.fromkeys([*teachers, *([reference] if reference else []), *names]))


# The reference baseline every MIL method is checked against in summary.csv and the report
# (``below_reference``): a linear model on mean-pooled instance features. A MIL method below it by more
# than noise has learnt nothing a linear model on bag means could not (issue 17).
MEAN_POOL_REFERENCE = "meanpool"


def is_reference_baseline(name: str) -> bool:
    """Whether ``name`` is a reference baseline (mean/max pool + linear head), not a MIL method."""
    return name in METHODS and METHODS[name].family == "reference"


def default_reference(methods: Sequence[str], variants: dict[str, Any] | None = None) -> str:
    """The first baseline (a method without a teacher) in ``methods`` that is a MIL method, not a
    reference baseline (those have their own check, :data:`MEAN_POOL_REFERENCE`); else the first
    reference baseline; else the first method's baseline."""
    variants = variants or {}
    plain = [n for n in methods if n in METHODS and METHODS[n].baseline is None]
    for name in plain:
        if not is_reference_baseline(name):
            return name
    if plain:
        return plain[0]
    first = methods[0]
    spec = METHODS.get(base_method(first, variants))
    return (spec.baseline if spec else None) or first
