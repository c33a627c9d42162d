"""Typed ``mil`` settings: defaults come from the schema only, bad keys give one line, models show their
hyper-parameters, and `wsi-mil splits` takes its defaults from the config like the other commands."""

from __future__ import annotations

import dataclasses
import inspect

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_schema
from pipeline.errors import PipelineError
from pipeline.mil.models import create_mil_model, model_class, model_kwargs
from pipeline.settings import MHIMSettings, MILSettings, MSMSettings, mil_settings

SCHEMA = load_schema()["properties"]["mil"]["properties"]


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_types_declare_exactly_the_schema_keys_and_take_its_defaults():
    assert _fields(MILSettings) - {"model"} == set(SCHEMA)
    assert _fields(MHIMSettings) == set(SCHEMA["mhim"]["properties"])
    assert _fields(MSMSettings) == set(SCHEMA["msm"]["properties"])
    s = MILSettings.defaults()
    for key, spec in SCHEMA.items():
        if key in ("mhim", "msm"):
            for sub, sub_spec in spec["properties"].items():
                assert getattr(getattr(s, key), sub) == sub_spec["default"], f"{key}.{sub}"
        elif key == "methods":
            assert list(s.methods) == spec["default"]
        else:
            assert getattr(s, key) == spec["default"], key
    assert s.model == {}
    # no default value is written in the types themselves
    required = [f for f in dataclasses.fields(MILSettings) if f.name != "model"]
    assert all(f.default is dataclasses.MISSING for f in required)


def test_overrides_are_typed_and_the_settings_frozen():
    s = mil_settings(
        None, ["epochs=5", "lr=5e-4", "mhim.rhsm_ratio=0.01", "embed_dims=[256,128,64]"]
    )
    assert s.epochs == 5 and s.lr == 5e-4 and isinstance(s.lr, float)
    assert s.mhim.rhsm_ratio == 0.01 and s.mhim.grn_queries == 5  # the rest keeps its default
    assert s.model == {"embed_dims": [256, 128, 64]}
    assert MILSettings.from_mapping(s.to_dict()) == s  # model.json's cfg rebuilds the same settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epochs = 3
    assert s.replace(seed=7).seed == 7 and s.seed == 0


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"mhim": {"ratio": 0.1}}, "unknown key 'mil.mhim.ratio'"),
        ({"msm": {"stage": 2}}, "unknown key 'mil.msm.stage'"),
        ({"epochs": "ten"}, "'mil.epochs' = 'ten': expected integer"),
        ({"protocol": "papers"}, "'mil.protocol' = 'papers': expected one of"),
        ({"val_fraction": 0.5}, "'mil.val_fraction' = 0.5: expected a value < 0.5"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_it(cfg, named):
    with pytest.raises(PipelineError) as err:
        MILSettings.from_mapping(cfg, source="cfg.yaml")
    assert named in str(err.value) and "\n" not in str(err.value)
    assert err.value.where == "cfg.yaml"


def test_model_keys_are_checked_against_the_models_signature():
    s = mil_settings(None, ["landmarks=16", "hidden_dim=16"])
    assert create_mil_model("transmil", 8, 2, s).attn1.landmarks == 16
    with pytest.raises(PipelineError, match="unknown model key 'landmarks'"):
        create_mil_model("abmil", 8, 2, s)
    with pytest.raises(PipelineError, match="unknown model key 'stages'"):
        create_mil_model("msm", 8, 2, {"stages": 2})  # it is mil.msm.stages


@pytest.mark.parametrize("name", ["abmil", "transmil", "dsmil", "msm", "mhim_abmil"])
def test_constructors_show_their_hyper_parameters(name):
    s = mil_settings(None, ["hidden_dim=16", "msm.stages=2", "mhim.grn_queries=3"])
    kwargs = model_kwargs(name, s)
    params = set(inspect.signature(model_class(name).__init__).parameters)
    if name.startswith("mhim"):  # the rest goes to the wrapped baseline
        params |= set(inspect.signature(model_class("abmil").__init__).parameters)
    assert set(kwargs) <= params and kwargs["hidden_dim"] == 16
    model = model_class(name)(*(["abmil"] if name.startswith("mhim") else []), 8, 2, **kwargs)
    assert model.hidden_dim == 16
    if name == "msm":
        assert model.stages == 2
    if name == "mhim_abmil":
        assert model.grn.queries.shape == (3, 16)
        assert kwargs["rhsm_ratio"] == SCHEMA["mhim"]["properties"]["rhsm_ratio"]["default"]


def test_splits_command_takes_its_defaults_from_the_config(tmp_path):
    labels = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(24)],
            "case_id": [f"c{i}" for i in range(24)],
            "label": [i % 2 for i in range(24)],
        }
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        "slides_dir: x\nresults_dir: y\ntasks: [{name: t, type: classification, table: t.csv}]\n"
        "mil: {folds: 3, seed: 4, val_fraction: 0.25}\n"
    )
    out = tmp_path / "splits.csv"
    assert (
        main(["splits", str(tmp_path / "labels.csv"), "-o", str(out), "--config", str(config)]) == 0
    )
    splits = pd.read_csv(out)
    assert splits["fold"].nunique() == 3
    from pipeline.mil.splits import make_splits
    from pipeline.mil.tasks import ClassificationTask

    strata, val_strata = ClassificationTask(labels.astype({"case_id": str})).case_strata()
    expected = make_splits(strata, 3, 4, 0.25, val_strata)
    assert splits["role"].tolist() == expected["role"].tolist()
    # a flag wins over the config; without either, the schema default
    main(
        [
            "splits",
            str(tmp_path / "labels.csv"),
            "-o",
            str(out),
            "--config",
            str(config),
            "--folds",
            "4",
        ]
    )
    assert pd.read_csv(out)["fold"].nunique() == 4
    main(["splits", str(tmp_path / "labels.csv"), "-o", str(out)])
    assert pd.read_csv(out)["fold"].nunique() == SCHEMA["folds"]["default"]


def test_splits_command_rejects_a_bad_flag_in_one_line(tmp_path, capsys):
    pd.DataFrame({"slide_id": ["a"], "case_id": ["a"], "label": [0]}).to_csv(
        tmp_path / "l.csv", index=False
    )
    argv = [
        "splits",
        str(tmp_path / "l.csv"),
        "-o",
        str(tmp_path / "s.csv"),
        "--val-fraction",
        "0.7",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'mil.val_fraction' = 0.7" in err[0]
    assert not (tmp_path / "s.csv").exists()
