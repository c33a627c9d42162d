"""Typed records instead of dicts: config sections, enum-like settings from the schema, model.json."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.config import SCHEMA_PATH, schema_enum, schema_values
from pipeline.errors import PipelineError


def _schema_enum(*path):
    node = yaml.safe_load(SCHEMA_PATH.read_text())
    for part in path:
        node = node[part]
    return tuple(node["enum"])


def test_enum_values_come_from_the_schema():
    props = ("properties",)
    assert schema_values("mil.selection") == _schema_enum(*props, "mil", *props, "selection")
    assert schema_values("tasks.type") == _schema_enum(*props, "tasks", "items", *props, "type")
    assert schema_values("features.encoders") == _schema_enum(
        *props, "features", *props, "encoders", "items"
    )
    selection = schema_enum("Selection", "mil.selection")
    assert [m.value for m in selection] == list(schema_values("mil.selection"))
    assert selection("inner_cv") == "inner_cv" and selection.fixed == "fixed"
    with pytest.raises(ValueError):
        selection("best_on_test")


def test_feature_and_heatmap_sections_as_records(tmp_path):
    from pipeline.features import DTYPES, ExtractOptions
    from pipeline.heatmaps.render import RenderOptions
    from pipeline.settings import feature_settings, heatmap_settings

    assert DTYPES == schema_values("features.dtype")
    cfg = {
        "slides_dir": "s",
        "results_dir": "r",
        "tasks": [{"name": "t", "type": "classification", "table": "t.csv"}],
        "features": {"encoders": ["uni"], "weights": {"uni": "/w/uni.bin"}, "dtype": "float32"},
        "heatmaps": {"normalise": "raw", "k": 3, "max_side": 512},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    features = feature_settings(path)
    assert features.encoders == ("uni",) and features.batch_size == 64  # schema default
    assert features.weights_for("uni") == "/w/uni.bin"
    assert features.weights_for("resnet50_trunc") == "pretrained"
    options = ExtractOptions.from_config(features, batch_size=8)
    assert (options.batch_size, options.dtype, options.workers) == (8, "float32", 4)
    heat = heatmap_settings(path)
    assert (heat.k, heat.normalise, heat.cmap) == (3, "raw", "jet")
    drawn = RenderOptions.from_settings(heat, max_side=1024)
    assert (drawn.normalise, drawn.max_side, drawn.alpha, drawn.score) == ("raw", 1024, 0.5, None)
    assert RenderOptions.from_settings(heat, score="instance_logit").score == "instance_logit"


def test_model_json_record(tmp_path):
    from pipeline.mil.folder import FoldFolder, ModelRecord

    data = {
        "method": "mhim_abmil",
        "variant": "no_grn",
        "in_dim": "16",
        "n_outputs": 2,
        "task": {"type": "classification", "classes": ["0", "1"]},
        "cfg": {"hidden_dim": 8},
        "fold": 3,
        "ensemble": 4,
        "ensemble_members": ["inner0", "inner1", "inner2", "whole"],
        "written_by_a_newer_version": True,
    }
    record = ModelRecord.from_json(data, "model.json")
    assert (record.name, record.method, record.in_dim, record.fold) == (
        "no_grn",
        "mhim_abmil",
        16,
        3,
    )
    assert record.ensemble == 4 and record.ensemble_members[-1] == "whole"
    assert record.precision == "fp32" and record.extra == {"written_by_a_newer_version": True}
    fold = tmp_path / "fold0"
    fold.mkdir()
    del data["in_dim"]
    (fold / "model.json").write_text(json.dumps(data))
    with pytest.raises(PipelineError) as caught:
        FoldFolder(fold).model_record()
    assert caught.value.line() == (
        f"ERROR {fold / 'model.json'}: model.json lacks in_dim. Re-train this fold."
    )


def test_mil_settings_enums_are_the_schemas_and_read_as_strings():
    """Enum-like ``mil`` settings are enums of the schema's values, yet records and pickles are as
    with plain strings: model.json holds ``"inner_cv"``, a worker process gets the same member."""
    import pickle

    from pipeline.settings import MILSettings

    s = MILSettings.from_mapping(
        {"selection": "inner_cv", "protocol": "paper", "threshold": "argmax"}
    )
    fields = {
        "protocol": "mil.protocol",
        "selection": "mil.selection",
        "survival_loss": "mil.survival_loss",
        "monitor": "mil.monitor",
        "threshold": "mil.threshold",
        "precision": "mil.precision",
    }
    for name, key in fields.items():
        value = getattr(s, name)
        assert [m.value for m in type(value)] == list(schema_values(key)), name
    assert [m.value for m in type(s.mhim.instance_score)] == list(
        schema_values("mil.mhim.instance_score")
    )
    assert (s.selection, s.protocol, s.threshold) == ("inner_cv", "paper", "argmax")
    assert {"inner_cv": 1}[s.selection] == 1  # hashes as its string
    assert f"{s.selection} {s.selection!r}" == "inner_cv 'inner_cv'"  # messages as before
    record = json.loads(json.dumps(s.to_dict()))
    assert (record["selection"], record["mhim"]["instance_score"]) == ("inner_cv", "class_aware")
    assert MILSettings.from_mapping(record) == s
    again = pickle.loads(pickle.dumps(s))
    assert again == s and again.selection is s.selection
