"""Out-of-fold heatmaps of one task x encoder x method: each slide scored by the fold model that never
saw it.

Every case is in the *test* part of exactly one fold of the task's splits file; its slides are scored
by that fold's model and by no other, so a heatmap never shows a model's view of a slide it trained or
selected its epoch on. Each fold model is loaded once and scores all of its test slides. A slide is
scored on its own (a survival case with two slides gets one map per slide; its ``prediction`` is the
risk of that slide alone). Per slide the folder gets the score store, the heatmap and the gallery
(:func:`pipeline.layout.heatmap_files`); ``index.json`` (:data:`pipeline.layout.HEATMAP_INDEX`) is
written last and lists, per slide, the fold, case, files, label and prediction, and the slides that
failed with the reason. With tumour masks, ``localisation.csv`` holds the per-slide AUC of every score.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from pipeline import layout
from pipeline.errors import PipelineError
from pipeline.heatmaps.render import RenderOptions
from pipeline.log import get_logger
from pipeline.mil.results import (
    Bag,
    ClassificationTask,
    FeatureBank,
    ModelRecord,
    Task,
    feature_stores,
    load_fold_model,
    test_cases,
    test_folds,
)

log = get_logger("heatmaps")


@dataclass
class HeatmapJob:
    """What one heatmaps run writes and how: the method, its fold folders by fold number, the output
    folder, the features folder, drawing options, gallery size, the optional tumour masks and the device."""

    method: str
    fold_dirs: dict[int, Path]
    outdir: Path
    features_dir: Path
    options: RenderOptions = field(default_factory=RenderOptions)
    k: int = 8
    masks: Path | None = None
    device: str = "cpu"
    splits_path: str = ""


class SlideEntry(TypedDict):
    """One slide of ``index.json``: the fold whose model scored it, its case, label and prediction as
    the picture shows them, the score names, the patch count and its files (names in the folder)."""

    fold: int | None
    case_id: str
    label: Any
    prediction: Any
    scores: list[str]
    n_patches: int
    store: str
    png: str
    gallery: str | None


def fold_dirs_by_number(paths: Sequence[str | os.PathLike]) -> dict[int, Path]:
    """Fold folders keyed by the k of their ``fold{k}`` name; two folders for one fold are an error."""
    found: dict[int, Path] = {}
    for p in map(Path, paths):
        k = layout.fold_number(p)
        if k is None:
            raise PipelineError(p, "not a fold folder (fold{k})", "Pass the folders `train` wrote.")
        if k in found:
            raise PipelineError(p, f"fold {k} given twice (also {found[k]})")
        found[k] = p
    return found


def bags_by_test_fold(bags: Sequence[Bag], splits: pd.DataFrame) -> dict[int, list[Bag]]:
    """The bags each fold's model scores: those whose case is in that fold's test part."""
    fold_of = test_folds(splits)
    groups: dict[int, list[Bag]] = defaultdict(list)
    for bag in bags:
        if bag.case_id not in fold_of:
            log.warning("case %s: in no fold's test part; no heatmap", bag.case_id)
            continue
        groups[fold_of[bag.case_id]].append(bag)
    return dict(sorted(groups.items()))


def label_text(task: Task, bag: Bag) -> Any:
    """The bag's label as a reader knows it: class name, or ``time T, event E``."""
    if bag.target is None:
        return None
    if isinstance(task, ClassificationTask):
        return task.classes[int(bag.target)]
    return f"time {bag.target[1]:g}, event {bag.target[2]}"


def prediction_of(task: Task):
    """Logits -> what the heatmap title shows: P(positive class) for a binary classifier, the class
    probabilities for more classes, the risk for survival (as in predictions.csv)."""
    import torch

    def predict(logits: np.ndarray) -> Any:
        out = task.outputs(torch.as_tensor(np.asarray(logits, np.float32)).reshape(1, -1))[0]
        if not isinstance(task, ClassificationTask):
            return float(out[0])
        return float(out[-1]) if len(out) == 2 else [float(v) for v in out]

    return predict


def _check_model(meta: ModelRecord, job: HeatmapJob, fold: int, where: Path) -> None:
    """The fold's model is ``job.method``'s: a variant's folds record their base method as ``method``
    (what rebuilds the network) and their own name as ``variant``."""
    problems = []
    if meta.name != job.method:
        problems.append(f"it is a {meta.name} model, not {job.method}")
    if meta.fold is not None and meta.fold != fold:
        problems.append(f"it was trained on fold {meta.fold}, the folder says {fold}")
    if problems:
        raise PipelineError(where, "; ".join(problems), "Pass this method's own fold folders.")


def score_fold(
    task: Task,
    bags: Sequence[Bag],
    bank: FeatureBank,
    stores: dict[str, Path],
    fold: int,
    tested: set[str],
    job: HeatmapJob,
) -> tuple[dict[str, SlideEntry], dict[str, str]]:
    """Load fold ``fold``'s model once and write the store and pictures of each of its test slides
    (``tested``: the cases of the fold's test part)."""
    folder = job.fold_dirs.get(fold)
    if folder is None:
        raise PipelineError(
            f"fold {fold}", "no fold folder given for it", "Pass every fold folder of the method."
        )
    model, meta = load_fold_model(folder, job.device)
    _check_model(meta, job, fold, folder)
    entries, failed = {}, {}
    for bag in bags:
        if bag.case_id not in tested:  # the guarantee, checked where it matters
            raise PipelineError(folder, f"case {bag.case_id} is not in fold {fold}'s test part")
        for slide in bag.slide_ids:
            try:
                provenance = {"fold": fold, "role": "test", "case_id": bag.case_id}
                provenance |= {"model_dir": str(folder), "splits": job.splits_path}
                entries[slide] = score_slide_files(
                    task, bag, slide, stores[slide], model, provenance, job, bank
                )
            except PipelineError as err:
                failed[slide] = err.line()
                log.error("%s", err.line())
    return entries, failed


def score_slide_files(
    task: Task,
    bag: Bag,
    slide: str,
    features_store: Path,
    model,
    provenance: dict[str, Any],
    job: HeatmapJob,
    bank: FeatureBank,
) -> SlideEntry:
    """One slide: its score store, heatmap and gallery; returns its index entry."""
    from pipeline.heatmaps.outputs import draw_slide, score_slide
    from pipeline.store import read_attrs

    tiles = read_attrs(features_store).get("tiles")
    if not tiles:
        raise PipelineError(
            features_store,
            "feature store records no tile geometry",
            "Heatmaps need stores written by `wsi-mil extract`.",
        )
    files = layout.heatmap_files(job.outdir, slide)
    coords = bank.coords(slide)
    store = score_slide(
        files["store"],
        model,
        bank.get(slide).float(),
        coords,
        tiles,
        slide_id=slide,
        method=job.method,
        label=label_text(task, bag),
        prediction=prediction_of(task),
        provenance={**provenance, "features_store": str(features_store)},
    )
    gallery = files["gallery"] if job.k > 0 else None
    draw_slide(store, files["png"], gallery, options=job.options, k=job.k)
    attrs = read_attrs(store)
    return SlideEntry(
        fold=provenance.get("fold"),
        case_id=bag.case_id,
        label=attrs["label"],
        prediction=attrs["prediction"],
        scores=list(attrs["scores"]),
        n_patches=int(len(coords)),
        store=files["store"].name,
        png=files["png"].name,
        gallery=gallery.name if gallery else None,
    )


def localisation_rows(outdir: Path, entries: dict[str, SlideEntry], masks: Path) -> pd.DataFrame:
    """Per slide and score: the localisation AUC against the tumour mask (None where undefined)."""
    from pipeline.heatmaps.localisation import store_localisation

    rows = []
    for entry in entries.values():
        for score in entry["scores"]:
            row = store_localisation(outdir / entry["store"], masks, score)
            rows.append({**row, "fold": entry["fold"], "label": entry["label"]})
    columns = ["slide_id", "method", "score", "auc", "n_patches", "n_tumour", "fold", "label"]
    return pd.DataFrame(rows, columns=columns)


def localisation_summary(table: pd.DataFrame) -> dict[str, dict]:
    """Per score: median and range of the defined per-slide AUCs (positive slides)."""
    from pipeline.heatmaps.localisation import summarise

    return {
        str(score): summarise([None if pd.isna(a) else float(a) for a in part["auc"]])
        for score, part in table.groupby("score", sort=False)
    }


def run_heatmaps(
    task: Task, bags: Sequence[Bag], bank: FeatureBank, splits: pd.DataFrame, job: HeatmapJob
) -> dict[str, Any]:
    """Every slide of ``bags`` scored out of fold into ``job.outdir``; returns (and writes last) the index."""
    from pipeline.store import write_json, write_text

    index_path = job.outdir / layout.HEATMAP_INDEX
    index_path.unlink(missing_ok=True)  # incomplete until rewritten
    job.outdir.mkdir(parents=True, exist_ok=True)
    stores = feature_stores(job.features_dir)
    entries: dict[str, SlideEntry] = {}
    failed: dict[str, str] = {}
    for fold, fold_bags in bags_by_test_fold(bags, splits).items():
        done, bad = score_fold(task, fold_bags, bank, stores, fold, test_cases(splits, fold), job)
        entries.update(done)
        failed.update(bad)
        log.info("fold %d: %d slide(s) scored", fold, len(done))
    index: dict[str, Any] = {
        "method": job.method,
        "task_type": task.type,
        "splits": job.splits_path,
        "folds": {str(k): str(p) for k, p in sorted(job.fold_dirs.items())},
        "slides": dict(sorted(entries.items())),
        "failed": failed,
    }
    if job.masks is not None:
        table = localisation_rows(job.outdir, index["slides"], job.masks)
        write_text(job.outdir / layout.LOCALISATION_CSV, table.to_csv(index=False))
        index["masks"] = str(job.masks)
        index["localisation"] = localisation_summary(table)
    write_json(index_path, index)
    return index
