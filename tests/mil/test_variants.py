"""Named method variants: validated in one line each, built with their overrides, run by `wsi-mil cv`
under their own name on the teacher checkpoints of their base method."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.config import config_errors
from pipeline.mil.folder import FoldFolder
from pipeline.mil.models import create_mil_model
from pipeline.settings import MILSettings

from .conftest import planted_bags, write_features

FAST = ["epochs=2", "patience=2", "hidden_dim=8"]
NO_GRN = {"method": "mhim_abmil", "mhim": {"grn": False}}


def _config(**mil) -> dict:
    return {
        "slides_dir": "s",
        "results_dir": "r",
        "tasks": [{"name": "t", "type": "classification", "table": "x.csv"}],
        "mil": mil,
    }


def test_bad_variants_give_one_line_each():
    lines = config_errors(
        _config(
            variants={
                "v1": {"method": "nope"},
                "v2": {"method": "mhim_abmil", "mhim": {"gnr": False}},
                "v3": {"method": "abmil", "mhim": {"grn": False}},
                "v4": {"method": "mhim_abmil", "mhim": {"rhsm_ratio": 0.9}},
                "abmil": {"method": "mhim_abmil"},
            },
            reference="missing",
        )
    )
    text = "\n".join(lines)
    assert len(lines) == 6
    assert "'mil.variants.v1': method 'nope' is not one of abmil" in text
    assert "'mil.variants.v2': unknown key 'mhim.gnr'" in text
    assert "'mil.variants.v3': method abmil has no 'mhim' switches" in text
    assert "'mil.variants.v4': 'mhim.rhsm_ratio' = 0.9: expected a value <= 0.5" in text
    assert "'mil.variants.abmil': a method has this name" in text
    assert "'mil.reference' = 'missing'" in text
    assert config_errors(_config(variants={"v": NO_GRN}, methods=["abmil", "v"])) == []


def test_variant_settings_and_model_lack_grn_parameters():
    settings = MILSettings.from_mapping({"variants": {"no_grn": NO_GRN}, "hidden_dim": 8})
    assert settings.run_names() == [
        "meanpool",
        "maxpool",
        "abmil",
        "abmil_std",
        "mhim_abmil",
        "no_grn",
    ]
    base, varied = settings.for_method("no_grn")
    assert base == "mhim_abmil" and varied.mhim.grn is False and settings.mhim.grn is True
    assert varied.mhim.rhsm_ratio == settings.mhim.rhsm_ratio  # the other switches are kept
    assert settings.for_method("mhim_abmil") == ("mhim_abmil", settings)
    full = create_mil_model("mhim_abmil", 16, 2, settings)
    ablated = create_mil_model(base, 16, 2, varied)
    assert any(name.startswith("grn.") for name, _ in full.named_parameters())
    assert not any("grn" in name for name, _ in ablated.named_parameters())


@pytest.fixture(scope="module")
def variant_cv(tmp_path_factory):
    """`wsi-mil cv` of a variant against its full method: 2 folds, 2 repeats."""
    work = tmp_path_factory.mktemp("variant_cv")
    arrays, labels = planted_bags(n_bags=24, dim=16, n_min=8, n_max=16)
    features = write_features(work / "features", arrays)
    labels.to_csv(work / "labels.csv", index=False)
    (work / "cfg.yaml").write_text(yaml.safe_dump(_config(variants={"no_grn": NO_GRN})))
    argv = [
        "cv", "--features", features, "--labels", work / "labels.csv", "--method", "no_grn",
        "--reference", "mhim_abmil", "--config", work / "cfg.yaml", "--folds", 2, "--repeats", 2,
        "--n-boot", 200, "-o", work / "out", *FAST,
    ]  # fmt: skip
    torch.set_num_threads(1)
    assert main([str(a) for a in argv]) == 0
    return work / "out"


def test_variant_folds_use_the_teachers_of_the_full_method(variant_cv):
    for repeat in (0, 1):
        for fold in (0, 1):
            part = f"repeat{repeat}/fold{fold}"
            variant = json.loads((variant_cv / "no_grn" / part / "metrics.json").read_text())
            full = json.loads((variant_cv / "mhim_abmil" / part / "metrics.json").read_text())
            assert variant["teacher"] == full["teacher"] == str(variant_cv / "abmil" / part)
            assert variant["method"] == "no_grn" and variant["base_method"] == "mhim_abmil"
            meta = json.loads((variant_cv / "no_grn" / part / "model.json").read_text())
            assert meta["method"] == "mhim_abmil" and meta["variant"] == "no_grn"
            assert meta["cfg"]["mhim"]["grn"] is False
            state = torch.load(variant_cv / "no_grn" / part / "model.pt", weights_only=True)
            assert not any("grn" in k for k in state)
            full_state = torch.load(
                variant_cv / "mhim_abmil" / part / "model.pt", weights_only=True
            )
            # the default selection saves the 3 inner models and the whole-part one: members.{i}.grn.*
            assert any(k.startswith("members.0.grn.") for k in full_state)
    # `wsi-mil predict` rebuilds the variant from model.json (base method + its settings)
    model, _ = FoldFolder(variant_cv / "no_grn" / "repeat1" / "fold0").load_model("cpu")
    assert len(model.members) == 4 and all(m.grn is None for m in model.members)


def test_variant_appears_under_its_own_name_in_the_summary(variant_cv):
    table = pd.read_csv(variant_cv / "summary.csv")
    assert list(table["method"]) == ["abmil", "mhim_abmil", "no_grn"]
    row = table.set_index("method").loc["no_grn"]
    assert row["reference"] == "mhim_abmil" and row["n_repeats"] == 2 and row["n_folds"] == 2
    assert isinstance(row["verdict_cv"], str) and "AUC" in row["verdict_cv"]
    assert json.loads((variant_cv / "no_grn" / "summary.json").read_text())["method"] == "no_grn"
    # what the variant is, readable without the config (the ablation table's row label)
    assert row["definition"] == "mhim_abmil: mhim.grn=false"
    assert table["definition"].isna().sum() == 2  # methods have none


@pytest.fixture(scope="module")
def laid_out(variant_cv, tmp_path_factory):
    """The cv folds in a workflow results layout, with `wsi-mil evaluate` and `wsi-mil summary` run."""
    import shutil

    results = tmp_path_factory.mktemp("laid_out") / "results"
    summaries = []
    for method in ("abmil", "mhim_abmil", "no_grn"):
        dst = results / "mil" / "t" / "e" / method
        shutil.copytree(variant_cv / method, dst, ignore=shutil.ignore_patterns("summary.json"))
        dirs = [dst / f"repeat{r}" / f"fold{k}" for r in (0, 1) for k in (0, 1)]
        assert main(["evaluate", *map(str, dirs), "-o", str(dst / "summary.json")]) == 0
        summaries.append(str(dst / "summary.json"))
    out = results / "summary.csv"
    argv = ["summary", *summaries, "-o", str(out), "--reference", "abmil", "--n-boot", "200"]
    assert main(argv) == 0
    return results


def test_summary_columns_equal_pipeline_stats_on_the_fold_outputs(laid_out):
    """The statistics columns of summary.csv equal pipeline.stats computed here from the fold
    folders' metrics.json and predictions.csv."""
    from pipeline.stats import MethodResults, compare_methods, summarise_method, summary_columns

    results = laid_out
    table = pd.read_csv(results / "summary.csv").set_index("method")
    assert set(summary_columns("classification")) <= set(table.columns)

    def results_of(method: str) -> MethodResults:
        rows, preds = [], []
        for r in (0, 1):
            for k in (0, 1):
                fold = results / "mil" / "t" / "e" / method / f"repeat{r}" / f"fold{k}"
                m = json.loads((fold / "metrics.json").read_text())
                n = m["n_bags"]
                rows.append({"repeat": r, "fold": k, **m["test"], "n_train": n["train"] + n["val"],
                             "n_test": n["test"]})  # fmt: skip
                p = pd.read_csv(fold / "predictions.csv")
                preds.append(p[p.role == "test"].assign(repeat=r))
        return MethodResults(method, pd.DataFrame(rows), pd.concat(preds, ignore_index=True))

    ref = results_of("abmil")
    for method in ("mhim_abmil", "no_grn"):
        other = results_of(method)
        stats = summarise_method(other.fold_metrics, other.predictions, "classification", seed=0)
        for key in ("auc_mean", "auc_ci_low", "auc_ci_high", "auc_pooled", "auc_pooled_ci_low",
                    "accuracy_pooled_ci_high", "n_repeats", "n_cases_pooled"):  # fmt: skip
            assert table.loc[method, key] == pytest.approx(stats[key], nan_ok=True), key
        comp = compare_methods(ref, other, "classification", n_boot=200, seed=0)
        for key in ("diff_cv", "diff_cv_p", "diff_cv_ci_low", "diff_pooled", "diff_pooled_p"):
            assert table.loc[method, key] == pytest.approx(comp[key], nan_ok=True), key
        assert table.loc[method, "verdict_cv"] == comp["verdict_cv"]
        assert table.loc[method, "reference"] == "abmil"
    assert pd.isna(table.loc["abmil", "diff_cv"])


def test_report_shows_fold_dots_intervals_and_comparisons_in_words(laid_out):
    from pipeline.report import comparisons

    part = pd.read_csv(laid_out / "summary.csv")
    block = comparisons.section_html(part)
    assert "Intervals" in block and "Comparisons with the reference" in block
    for _, row in part[part["method"] != "abmil"].iterrows():
        assert row["verdict_cv"].replace("'", "&#x27;") in block  # the words of in_words
    assert block.count("holdout") == 3 + 2  # the protocol beside every row of both tables
    assert block.count("mhim_abmil: mhim.grn=false") == 2  # the variant's definition, both tables
    values = comparisons.per_fold_values(laid_out, part.iloc[2], "auc")
    assert len(values) == 4 and sorted(set(values["repeat"])) == [0, 1]
    fig = comparisons.fold_dots(laid_out, part)
    assert fig.png.startswith(b"\x89PNG") and "holdout protocol" in fig.title
