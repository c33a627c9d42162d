"""Load and validate the workflow config against ``workflow/schemas/config.schema.yaml``.

The same schema is used by the Snakefile and by ``wsi-mil check-config``, and each problem is reported
as one line naming the key, the value and what was expected. Defaults from the schema are filled in,
so code can index ``cfg["tiling"]["min_tissue"]`` without repeating default values.
"""

from __future__ import annotations

import copy
import enum
import functools
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"


def load_schema() -> dict[str, Any]:
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    if not SCHEMA_PATH.exists():
        raise ConfigError(
            SCHEMA_PATH, "config schema not found", "Run wsi-mil from a checkout of the repository."
        )
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_values(key: str) -> tuple[str, ...]:
    """The values the schema allows for an enum-like setting, by dotted key (``mil.selection``,
    ``heatmaps.normalise``; ``tasks.type`` and ``features.encoders`` for the items of a list): the
    one list the code checks against, so a value added to the schema is known everywhere."""
    node = _schema()
    for part in key.split("."):
        node = (
            node["properties"][part] if "properties" in node else node["items"]["properties"][part]
        )
    node = node.get("items", node) if "enum" not in node else node
    return tuple(node["enum"])


def schema_enum(name: str, key: str) -> type[enum.StrEnum]:
    """A ``StrEnum`` named ``name`` whose members are :func:`schema_values` of ``key`` (member name =
    value); members compare (and hash) equal to the plain strings a config holds. It belongs to the
    caller's module, so bind it there under ``name``: then its members pickle (worker processes).
    A member's repr is its string's, so messages read as they did with plain strings."""
    module = sys._getframe(1).f_globals["__name__"]
    kind = enum.StrEnum(name, {v: v for v in schema_values(key)}, module=module)
    kind.__repr__ = str.__repr__  # type: ignore[method-assign]
    return kind


def _validator_with_defaults(schema: dict[str, Any]):
    """A Draft 2020-12 validator that also fills ``default`` values into the instance."""
    from jsonschema import Draft202012Validator, validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    return cls(schema)


def _expected(error) -> str:
    schema = error.schema
    validator = error.validator
    if validator == "type":
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return "expected " + " or ".join("null" if t == "null" else t for t in types)
    if validator == "enum":
        return "expected one of " + ", ".join(repr(v) for v in schema["enum"])
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return f"expected a value {sign[validator]} {schema[validator]}"
    if validator == "pattern":
        return f"expected text matching {schema['pattern']}"
    if validator == "minItems":
        return f"expected at least {schema['minItems']} item(s)"
    return error.message


def _describe(error, source: str) -> str:
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = ".".join(filter(None, [where, extra[0] if extra else "?"]))
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"{source}: unknown key '{key}'{hint}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        key = ".".join(filter(None, [where, missing]))
        return f"{source}: missing required key '{key}'"
    return f"{source}: '{where or '<top>'}' = {error.instance!r}: {_expected(error)}"


def config_errors(config: dict[str, Any], source: str = "config") -> list[str]:
    """All problems of ``config`` as one line each (empty when valid). Fills defaults in place."""
    validator = _validator_with_defaults(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    lines = [_describe(e, source) for e in errors]
    names = [t.get("name") for t in config.get("tasks", []) if isinstance(t, dict)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    lines += [f"{source}: task name '{n}' is used twice; task names must be unique" for n in dupes]
    return lines + _cross_field_errors(config, source)


def _weights_key_errors(features: dict[str, Any], source: str) -> list[str]:
    """A ``features.weights`` key that is misspelt, or names an encoder this config does not run,
    would silently leave the encoder on ``pretrained``: one line each."""
    weights, encoders = features.get("weights"), features.get("encoders") or []
    if not isinstance(weights, dict) or not isinstance(encoders, list):
        return []
    known = schema_values("features.encoders")
    lines = []
    for key in weights:
        if key not in known:
            lines.append(
                f"{source}: 'features.weights.{key}': not an encoder name (known: "
                f"{', '.join(known)}); the weights would never be used"
            )
        elif key not in encoders:
            lines.append(
                f"{source}: 'features.weights.{key}': not one of features.encoders "
                f"({', '.join(map(str, encoders))}); the weights would never be used"
            )
    return lines


def _cross_field_errors(config: dict[str, Any], source: str) -> list[str]:
    """What the schema cannot say: keys that must agree with each other or with the method table."""
    from pipeline.methods import METHODS

    lines = []
    tiling = config.get("tiling")
    if isinstance(tiling, dict):
        overlap, size = tiling.get("overlap"), tiling.get("patch_size")
        if isinstance(overlap, int) and isinstance(size, int) and overlap >= size:
            lines.append(
                f"{source}: 'tiling.overlap' = {overlap}: expected a value < tiling.patch_size "
                f"({size}); neighbouring patches cannot share a whole patch"
            )
    features = config.get("features")
    if isinstance(features, dict):
        lines += _weights_key_errors(features, source)
    mil = config.get("mil")
    methods = mil.get("methods") if isinstance(mil, dict) else None
    if isinstance(methods, list):
        lines += [
            f"{source}: 'mil.methods' has {name!r}: expected one of {', '.join(METHODS)}"
            for name in methods
            if name not in METHODS and name not in (mil.get("variants") or {})
        ]
    if isinstance(mil, dict):
        lines += _variant_errors(mil, source)
    return lines


def _skeleton() -> dict[str, Any]:
    """The smallest config the schema accepts, to validate one section on its own."""
    return {
        "slides_dir": "",
        "results_dir": "",
        "tasks": [{"name": "x", "type": "classification", "table": ""}],
    }


def _variant_errors(mil: dict[str, Any], source: str) -> list[str]:
    """One line per bad ``mil.variants`` entry: unknown base method, a switch section the base method
    does not have, an unknown or out-of-range switch (checked by the schema on the merged section),
    a name that shadows a method, and a ``mil.reference`` that names nothing that runs."""
    from pipeline.methods import METHODS, switch_section

    lines = []
    variants = mil.get("variants") if isinstance(mil.get("variants"), dict) else {}
    for name, spec in variants.items():
        where = f"{source}: 'mil.variants.{name}'"
        if not isinstance(spec, dict) or "method" not in spec:
            continue  # the schema reports it
        base = spec["method"]
        if name in METHODS:
            lines.append(f"{where}: a method has this name; give the variant its own name")
        elif base not in METHODS:
            lines.append(f"{where}: method {base!r} is not one of {', '.join(METHODS)}")
        else:
            for key, overrides in spec.items():
                if key not in ("mhim", "msm") or not isinstance(overrides, dict | None):
                    continue  # method, or a key/shape the schema reports
                if key != switch_section(base):
                    lines.append(
                        f"{where}: method {base} has no '{key}' switches"
                        + (
                            f" (its switches: {switch_section(base)})"
                            if switch_section(base)
                            else ""
                        )
                    )
                    continue
                merged = {**(mil.get(key) or {}), **(overrides or {})}
                wrapped = {**_skeleton(), "mil": {key: merged}}
                lines += [
                    f"{where}: " + p.removeprefix("variant: ").replace("'mil.", "'")
                    for p in config_errors(wrapped, "variant")
                ]
    reference = mil.get("reference")
    runs = list(mil.get("methods") or []) + list(variants)
    if reference is not None and reference not in runs:
        lines.append(
            f"{source}: 'mil.reference' = {reference!r}: expected one of the methods or variants "
            f"that run ({', '.join(map(str, runs))})"
        )
    return lines


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate (filling defaults) and return ``config``; raise one :class:`ConfigError` listing problems."""
    problems = config_errors(config, source)
    if len(problems) == 1:  # the usual case: one line, as every other error
        raise ConfigError(
            source,
            "invalid configuration: " + problems[0].removeprefix(f"{source}: "),
            "Fix this key (config.yaml documents each one).",
        )
    if problems:
        raise ConfigError(
            source,
            "invalid configuration:\n  " + "\n  ".join(problems),
            "Fix the keys above (config.yaml documents each one).",
        )
    return config


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read a YAML config (the repository's ``config.yaml`` by default), validated, defaults filled."""
    p = Path(path) if path else DEFAULT_CONFIG
    if not p.exists():
        raise ConfigError(p, "config file not found", "Pass an existing YAML file with --config.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(p, f"not valid YAML ({err})", "Fix the syntax.") from err
    if not isinstance(data, dict):
        raise ConfigError(p, "config must be a mapping of keys to values", "See config.yaml.")
    return validate_config(data, source=str(p))


def section(path: str | Path | None, name: str) -> dict[str, Any]:
    """One section (e.g. ``tiling``) of a config file, defaults filled; the defaults alone when path is None."""
    if path is None:
        cfg = {
            "slides_dir": "",
            "results_dir": "",
            "tasks": [{"name": "x", "type": "classification", "table": ""}],
        }
        return validate_config(cfg, source="defaults")[name]
    return load_config(path)[name]
