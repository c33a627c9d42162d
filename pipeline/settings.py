"""Typed settings: the validated ``mil`` config section as frozen dataclasses, built once and passed down.

The schema (``workflow/schemas/config.schema.yaml``) is the only place a default is written: these types
declare names and types but no default values, and are always built from a mapping the schema has
validated and filled. Keys of the ``mil`` section the schema does not know are model-specific
hyper-parameters (``embed_dims``, ``landmarks`` ...); they travel in :attr:`MILSettings.model` and the model
registry checks them against the chosen model's signature. Torch-free: the workflow may import it.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.config import schema_enum
from pipeline.errors import PipelineError

# the smallest top level the schema accepts, to validate one section on its own
_SKELETON = {
    "slides_dir": "",
    "results_dir": "",
    "tasks": [{"name": "x", "type": "classification", "table": ""}],
}


# enum-like settings are enums whose members come from the schema (config.schema_enum); members are
# strings too, so ``settings.selection == "holdout"`` and JSON records read as before
Protocol = schema_enum("Protocol", "mil.protocol")
Selection = schema_enum("Selection", "mil.selection")
SurvivalLoss = schema_enum("SurvivalLoss", "mil.survival_loss")
Monitor = schema_enum("Monitor", "mil.monitor")
Threshold = schema_enum("Threshold", "mil.threshold")
MILPrecision = schema_enum("MILPrecision", "mil.precision")
InstanceScore = schema_enum("InstanceScore", "mil.mhim.instance_score")
Normalise = schema_enum("Normalise", "heatmaps.normalise")
FeatureDtype = schema_enum("FeatureDtype", "features.dtype")
FeatureDevice = schema_enum("FeatureDevice", "features.device")
FeaturePrecision = schema_enum("FeaturePrecision", "features.precision")


@dataclass(frozen=True)
class MHIMSettings:
    """``mil.mhim``: the MHIM-MIL switches (meaning of each in ``pipeline/mil/mhim.py`` and config.yaml)."""

    rhsm_ratio: float
    rhsm_decay: bool
    random_mask_ratio: float
    instance_score: InstanceScore
    grn: bool
    grn_queries: int
    grn_momentum: float
    grn_at_inference: bool
    teacher_momentum: float
    consistency_weight: float
    temperature: float
    init_student_from_baseline: bool


@dataclass(frozen=True)
class MSMSettings:
    """``mil.msm``: stages and the fraction of instances each stage masks."""

    stages: int
    mask_ratio: float


@dataclass(frozen=True)
class MILSettings:
    """The ``mil`` section: folds, protocol, optimiser, model width, plus model-specific keys in ``model``."""

    methods: tuple[str, ...]
    folds: int
    seed: int
    val_fraction: float
    protocol: Protocol
    selection: Selection
    inner_folds: int
    accumulate: int
    survival_loss: SurvivalLoss
    epochs: int
    patience: int
    monitor: Monitor
    threshold: Threshold
    lr: float
    weight_decay: float
    dropout: float
    hidden_dim: int
    precision: MILPrecision
    survival_bins: int
    repeats: int
    reference: str | None
    external_all_cases: bool
    variants: dict[str, Any]
    mhim: MHIMSettings
    msm: MSMSettings
    model: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # not a schema key: no default there

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None, source: str = "mil config") -> MILSettings:
        """Validate ``cfg`` (a ``mil`` section, possibly partial) against the schema, fill its defaults, build.

        Any problem (wrong type, value out of range, unknown key under ``mhim``/``msm``) raises one
        :class:`PipelineError` line naming every bad key.
        """
        from pipeline.config import config_errors, load_schema

        cfg = dict(cfg or {})
        known = load_schema()["properties"]["mil"]["properties"]
        standard = {k: copy.deepcopy(v) for k, v in cfg.items() if k in known}
        model = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in known}
        for key in ("mhim", "msm"):  # an explicit null means "the defaults", as before
            if key in standard and standard[key] is None:
                del standard[key]
        wrapped = {**copy.deepcopy(_SKELETON), "mil": standard}
        problems = config_errors(wrapped, source)
        if problems:
            lines = [p.removeprefix(f"{source}: ") for p in problems]
            raise PipelineError(
                source, "; ".join(lines), "Fix these keys (config.yaml documents each one)."
            )
        return _build(cls, {**wrapped["mil"], "model": model})

    @classmethod
    def defaults(cls) -> MILSettings:
        """The schema's defaults."""
        return _defaults()

    def to_dict(self) -> dict[str, Any]:
        """The flat ``mil`` mapping (model keys at top level), as recorded in ``model.json``."""
        out = dataclasses.asdict(self)
        model = out.pop("model")
        out["methods"] = list(out["methods"])
        return {**out, **model}

    def replace(self, **changes: Any) -> MILSettings:
        """A copy with some settings changed (re-validated, so a bad value still gives one line)."""
        return MILSettings.from_mapping({**self.to_dict(), **changes}, source="mil settings")

    def run_names(self) -> list[str]:
        """Every method and variant to train, in order: ``methods``, then the variants not listed there."""
        return list(dict.fromkeys([*self.methods, *self.variants]))

    def for_method(self, name: str) -> tuple[str, MILSettings]:
        """``(base method, settings)`` of a method or a named variant (its switch overrides applied)."""
        from pipeline.methods import base_method

        if name not in self.variants:
            return name, self
        _, changes = variant_overrides(self.variants[name])
        current = self.to_dict()
        merged = {k: {**current[k], **v} for k, v in changes.items()}
        return base_method(name, self.variants), self.replace(**merged)


def variant_overrides(spec: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, Any]]]:
    """``(base method, {section: overrides})`` of one ``mil.variants`` entry (schema-checked shape)."""
    return str(spec["method"]), {k: dict(v or {}) for k, v in spec.items() if k != "method"}


def describe_variant(spec: Mapping[str, Any]) -> str:
    """One line saying what a ``mil.variants`` entry is, for tables and reports:
    ``mhim_abmil: mhim.grn=false, mhim.consistency_weight=0`` (the base method alone when it changes
    nothing), so an ablation row can be read without the config."""
    base, changes = variant_overrides(spec)

    def text(value: Any) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    items = [f"{sec}.{key}={text(v)}" for sec, kv in changes.items() for key, v in kv.items()]
    return f"{base}: {', '.join(items)}" if items else base


@functools.lru_cache(maxsize=1)
def _defaults() -> MILSettings:
    return MILSettings.from_mapping({}, source="defaults")


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    """``cls(**data)`` with nested dataclasses built too and numbers cast to the declared type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - names)
    if extra:  # the schema gained a key the types do not declare: a programming error
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(extra)}; add them")
    kwargs = {}
    for name in names & set(data):
        value, hint = data[name], hints[name]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        elif hint is float:
            value = float(value)
        elif hint == tuple[str, ...]:
            value = tuple(value)
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            value = hint(value)
        kwargs[name] = value
    return cls(**kwargs)


def mil_settings(
    config: str | os.PathLike | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> MILSettings:
    """The ``mil`` section of ``config`` (schema defaults when None) with ``key=value`` overrides applied.

    Overrides of keys the schema knows are validated by it (one line naming every bad key); other keys
    are model-specific and checked by the model registry when the model is built.
    """
    from pipeline.config import section
    from pipeline.overrides import apply_overrides, parse_overrides

    parsed = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    cfg = apply_overrides(section(config, "mil"), parsed)
    return MILSettings.from_mapping(cfg, source="mil config (with overrides)")


# --- the other sections with typed records: features and heatmaps -------------------------------


@dataclass(frozen=True)
class FeatureSettings:
    """The ``features`` section: which encoders, their weights (encoder -> ``pretrained``, ``random``
    or a path) and how extraction runs; CLI flags override the run part (``ExtractOptions``)."""

    encoders: tuple[str, ...]
    weights: dict[str, str]
    batch_size: int
    workers: int
    device: FeatureDevice
    precision: FeaturePrecision
    dtype: FeatureDtype
    slides_per_job: int

    def weights_for(self, encoder: str) -> str:
        return self.weights.get(encoder, "pretrained")


@dataclass(frozen=True)
class HeatmapSettings:
    """The ``heatmaps`` section: whether the stage runs, the gallery size and how pictures are drawn."""

    enabled: bool
    k: int
    max_side: int
    score: str | None
    normalise: Normalise
    alpha: float
    cmap: str


def feature_settings(config: str | os.PathLike | None = None) -> FeatureSettings:
    """The ``features`` section of ``config`` (schema defaults when None) as a typed record."""
    from pipeline.config import section

    cfg = section(config, "features")
    return _build(FeatureSettings, cfg)


def heatmap_settings(config: str | os.PathLike | None = None) -> HeatmapSettings:
    """The ``heatmaps`` section of ``config`` (schema defaults when None) as a typed record."""
    from pipeline.config import section

    cfg = section(config, "heatmaps")
    return _build(HeatmapSettings, cfg)
