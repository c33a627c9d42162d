"""Out-of-fold heatmaps (`wsi-mil heatmaps`): every slide scored by the one fold model that never saw it.

A cohort of 6 slide ids over one tiled synthetic slide (5 cases, one with two slides), random feature
stores carrying the tile geometry, stratified 3-fold splits and one differently seeded AB-MIL per fold.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.heatmaps.store import read_score_store
from pipeline.layout import HEATMAP_INDEX, LOCALISATION_CSV, heatmap_files
from pipeline.mil.scores import instance_score_maps
from pipeline.mil.splits import make_splits
from pipeline.store import read_array, write_store

DIM, FOLDS = 16, 3
SLIDES = {"S0": ("c0", "tumor"), "S1": ("c0", "tumor"), "S2": ("c1", "normal")}
SLIDES |= {"S3": ("c2", "tumor"), "S4": ("c3", "normal"), "S5": ("c4", "normal")}


def _fold_folder(path, fold: int, seed: int, variant: str | None = None) -> None:
    from pipeline.mil.folder import FoldFolder
    from pipeline.mil.models import create_mil_model
    from pipeline.mil.tasks import ClassificationTask
    from pipeline.settings import mil_settings

    settings = mil_settings()
    torch.manual_seed(seed)
    model = create_mil_model("abmil", DIM, 2, settings)
    task = ClassificationTask(
        pd.DataFrame({"slide_id": ["a", "b"], "case_id": ["a", "b"], "label": ["normal", "tumor"]})
    )
    meta = {"method": "abmil", "in_dim": DIM, "n_outputs": 2, "task": task.metadata()}
    meta |= {"cfg": settings.to_dict(), "fold": fold, "variant": variant}
    FoldFolder(path).write(model, meta, pd.DataFrame(), pd.DataFrame(), {"fold": fold})


@pytest.fixture(scope="module")
def cohort(tiled_slide, tmp_path_factory):
    root = tmp_path_factory.mktemp("oof")
    rng = np.random.default_rng(0)
    coords = tiled_slide["coords"]
    feats = root / "features"
    for slide in SLIDES:
        x = rng.normal(size=(len(coords), DIM)).astype(np.float16)
        attrs = {"slide_id": slide, "tiles": tiled_slide["tile_attrs"], "n_patches": len(coords)}
        write_store(feats / f"{slide}.zarr", {"features": x, "coords": coords}, attrs)
    labels = pd.DataFrame(
        [(s, c, y) for s, (c, y) in SLIDES.items()], columns=["slide_id", "case_id", "label"]
    )
    labels.to_csv(root / "labels.csv", index=False)
    strata = labels.groupby("case_id")["label"].first()
    make_splits(strata, folds=FOLDS, seed=0, val_fraction=0.2).to_csv(
        root / "splits.csv", index=False
    )
    for k in range(FOLDS):
        _fold_folder(root / "mil" / f"fold{k}", k, seed=100 + k)
    # every slide id gets the tiled slide's tumour mask
    (root / "masks").mkdir()
    shutil.copy(tiled_slide["masks_json"].parent / "H1_tumor.png", root / "masks" / "t.png")
    down = json.loads(tiled_slide["masks_json"].read_text())["slides"]["H1"]["mask_downsample"]
    entries = {s: {"tumor_mask": "masks/t.png", "mask_downsample": down} for s in SLIDES}
    (root / "masks" / "masks.json").write_text(json.dumps({"slides": entries}))
    out = root / "heatmaps"
    argv = ["heatmaps", "--features", str(feats), "--labels", str(root / "labels.csv")]
    argv += ["--method", "abmil", "--splits", str(root / "splits.csv"), "-o", str(out)]
    argv += ["--folds", *[str(root / "mil" / f"fold{k}") for k in range(FOLDS)]]
    argv += ["--masks", str(root / "masks" / "masks.json"), "-k", "2", "--max-side", "256"]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    return root, out


def test_every_slide_is_scored_by_the_model_that_tested_it(cohort):
    """The provenance names a fold whose TEST part holds the slide's case (never train or val), and the
    stored attention is that fold model's attention on the slide, not another fold's."""
    from pipeline.mil.folder import FoldFolder

    root, out = cohort
    splits = pd.read_csv(root / "splits.csv", dtype={"case_id": str})
    models = {k: FoldFolder(root / "mil" / f"fold{k}").load_model("cpu")[0] for k in range(FOLDS)}
    index = json.loads((out / HEATMAP_INDEX).read_text())
    assert sorted(index["slides"]) == sorted(SLIDES) and index["failed"] == {}
    for slide, (case, label) in SLIDES.items():
        store = read_score_store(heatmap_files(out, slide)["store"])
        prov = store.attrs["provenance"]
        fold = prov["fold"]
        roles = splits[splits["case_id"] == case].set_index("fold")["role"]
        assert roles[fold] == "test" and prov["case_id"] == case
        assert (roles.drop(index=fold) != "test").all()  # tested exactly once
        assert index["slides"][slide]["fold"] == fold and store.attrs["label"] == label
        x = torch.from_numpy(read_array(root / "features" / f"{slide}.zarr", "features"))
        x = x.float()
        own = instance_score_maps(models[fold], x)["attention"]
        np.testing.assert_allclose(store.scores["attention"], own, rtol=1e-5, atol=1e-7)
        for other in set(range(FOLDS)) - {fold}:
            assert not np.allclose(instance_score_maps(models[other], x)["attention"], own)
        assert 0.0 <= store.attrs["prediction"] <= 1.0  # P(tumor), the positive class


def test_pictures_and_galleries_sit_beside_every_store(cohort):
    _, out = cohort
    for slide in SLIDES:
        files = heatmap_files(out, slide)
        assert files["png"].read_bytes().startswith(b"\x89PNG")
        gallery = pd.read_csv(files["gallery_csv"])
        assert len(gallery) == 4  # k = 2 highest and 2 lowest


def test_localisation_csv_matches_the_index_summary(cohort):
    _, out = cohort
    table = pd.read_csv(out / LOCALISATION_CSV)
    assert set(table["slide_id"]) == set(SLIDES) and set(table["score"]) == {"attention"}
    defined = table.dropna(subset=["auc"])
    assert len(defined) == len(
        SLIDES
    )  # one mask for all: every slide has tumour and normal patches
    assert ((defined["auc"] >= 0) & (defined["auc"] <= 1)).all()
    summary = json.loads((out / HEATMAP_INDEX).read_text())["localisation"]["attention"]
    assert summary["median"] == pytest.approx(defined["auc"].median())
    assert summary["n_slides"] == len(defined)


def test_a_model_of_another_method_is_refused(cohort, tmp_path):
    root, _ = cohort
    argv = ["heatmaps", "--features", str(root / "features"), "--labels", str(root / "labels.csv")]
    argv += ["--method", "dsmil", "--splits", str(root / "splits.csv"), "-o", str(tmp_path / "o")]
    argv += ["--folds", *[str(root / "mil" / f"fold{k}") for k in range(FOLDS)], "-k", "0"]
    assert main(argv) == 1
    assert not (tmp_path / "o" / HEATMAP_INDEX).exists()


def test_a_variant_is_drawn_from_its_own_folds_and_refused_others(cohort, tmp_path):
    """A variant's fold models say ``method: abmil, variant: NAME``: heatmaps of NAME accept them,
    heatmaps of the base method refuse them (and the other way round)."""
    import yaml

    root, _ = cohort
    variants = {"abmil_small": {"method": "abmil"}}
    cfg = {"slides_dir": "s", "results_dir": "r", "mil": {"variants": variants}}
    cfg["tasks"] = [{"name": "t", "type": "classification", "table": "labels.csv"}]
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    for k in range(FOLDS):
        _fold_folder(tmp_path / "mil" / f"fold{k}", k, seed=100 + k, variant="abmil_small")
    argv = ["heatmaps", "--features", str(root / "features"), "--labels", str(root / "labels.csv")]
    argv += ["--splits", str(root / "splits.csv"), "-k", "0", "--max-side", "64"]
    argv += ["--config", str(tmp_path / "cfg.yaml"), "--device", "cpu"]
    variant_folds = [str(tmp_path / "mil" / f"fold{k}") for k in range(FOLDS)]
    base_folds = [str(root / "mil" / f"fold{k}") for k in range(FOLDS)]
    out = tmp_path / "v"
    assert main([*argv, "--method", "abmil_small", "-o", str(out), "--folds", *variant_folds]) == 0
    index = json.loads((out / HEATMAP_INDEX).read_text())
    assert index["method"] == "abmil_small" and len(index["slides"]) == len(SLIDES)
    for method, folds in (("abmil", variant_folds), ("abmil_small", base_folds)):
        other = [*argv, "--method", method, "-o", str(tmp_path / method), "--folds", *folds]
        assert main(other) == 1
        assert not (tmp_path / method / HEATMAP_INDEX).exists()


def test_predict_writes_the_same_stores_for_an_external_cohort(cohort, tmp_path):
    """`wsi-mil predict --heatmaps`: one store format; the scores are the given model's, labels shown."""
    from pipeline.mil.folder import FoldFolder

    root, _ = cohort
    fold0 = root / "mil" / "fold0"
    out = tmp_path / "ext"
    argv = ["predict", "--model", str(fold0), "--features", str(root / "features")]
    argv += ["-o", str(tmp_path / "pred.csv"), "--labels", str(root / "labels.csv")]
    argv += ["--heatmaps", str(out), "-k", "1", "--device", "cpu"]
    assert main(argv) == 0
    model = FoldFolder(fold0).load_model("cpu")[0]
    index = json.loads((out / HEATMAP_INDEX).read_text())
    assert sorted(index["slides"]) == sorted(SLIDES)
    for slide, (_, label) in SLIDES.items():
        files = heatmap_files(out, slide)
        store = read_score_store(files["store"])
        x = torch.from_numpy(read_array(root / "features" / f"{slide}.zarr", "features")).float()
        np.testing.assert_allclose(
            store.scores["attention"], instance_score_maps(model, x)["attention"], rtol=1e-5
        )
        assert store.attrs["provenance"]["role"] == "external" and store.attrs["method"] == "abmil"
        assert index["slides"][slide]["label"] == label
        assert files["png"].is_file() and len(pd.read_csv(files["gallery_csv"])) == 2


def test_predict_draws_only_the_labelled_cohort_of_a_shared_features_folder(cohort, tmp_path):
    """The workflow keeps an external cohort's stores beside the training cohort's: `predict
    --labels --heatmaps` draws the slides it predicted, not every store of the folder."""
    root, _ = cohort
    subset = {"S3", "S4"}
    labels = pd.read_csv(root / "labels.csv")
    labels[labels["slide_id"].isin(subset)].to_csv(tmp_path / "ext.csv", index=False)
    out = tmp_path / "ext"
    argv = ["predict", "--model", str(root / "mil" / "fold0"), "--features", str(root / "features")]
    argv += ["-o", str(out / "predictions.csv"), "--labels", str(tmp_path / "ext.csv")]
    argv += ["--heatmaps", str(out), "-k", "1", "--device", "cpu"]
    assert main(argv) == 0
    index = json.loads((out / HEATMAP_INDEX).read_text())
    assert set(index["slides"]) == subset == set(pd.read_csv(out / "predictions.csv")["slide_id"])
    assert sorted(p.name for p in out.glob("*.zarr")) == sorted(f"{s}.zarr" for s in subset)
