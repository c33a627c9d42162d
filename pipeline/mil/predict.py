"""Apply a trained fold model to new slides (an external cohort), rebuilt by :class:`FoldFolder`.

The fold's ``model.json`` (written beside the state dict by the trainer) records the method, input dimension,
number of outputs, the ``mil`` config it was built with and the task (class names and the binary
threshold chosen on the validation part; or the survival bin edges), which is all that is needed to
rebuild the network without the training data. With a labels/survival table the cohort is also scored
(the same metrics as the test folds, with the *training-time* threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.folder import FoldFolder
from pipeline.mil.inference import run_inference
from pipeline.mil.task_tables import read_table
from pipeline.mil.tasks import ClassificationTask, SurvivalTask, Task, task_from_metadata

log = get_logger("mil.predict")


def labelled_task(task: Task, labels, slides_table) -> Task:
    """The trained task re-applied to a labelled cohort (same classes and threshold, or same bin edges)."""
    if isinstance(task, ClassificationTask):
        labelled = ClassificationTask(
            read_table(labels, ["slide_id", "label"], "labels"),
            classes=task.classes,
            source=str(labels),
        )
        labelled.threshold = task.threshold
        return labelled
    labelled = SurvivalTask.from_csv(labels, slides_table, n_bins=task.n_bins)
    labelled.edges = task.edges
    return labelled


def unlabelled_bags(task: Task, bank: FeatureBank, slides_table) -> list[Bag]:
    """Bags without targets: one per slide (classification) or per case of the slides table (survival)."""
    if isinstance(task, ClassificationTask) or slides_table is None:
        return [Bag(s, s, (s,), None, bank) for s in bank.slides]
    mapping = read_table(slides_table, ["slide_id", "case_id"], "slides")
    mapping = mapping[mapping["slide_id"].map(lambda s: s in bank)]
    return [
        Bag(case, case, tuple(sorted(g)), None, bank)
        for case, g in mapping.groupby("case_id")["slide_id"]
    ]


def predict(
    model_dir, features_dir, labels=None, slides_table=None, device="auto"
) -> dict[str, Any]:
    """Scores for every slide/case of ``features_dir``; metrics too when ``labels`` is given."""
    device = resolve_device(device)
    model, meta = FoldFolder(model_dir).load_model(device)
    task = task_from_metadata(meta.task)
    if labels is not None:
        task = labelled_task(task, labels, slides_table)
        bank = FeatureBank.load(features_dir, task.wanted_slides())
        bags = task.make_bags(bank)
        task.encode(bags)
    else:
        bank = FeatureBank.load(features_dir)
        bags = unlabelled_bags(task, bank, slides_table)
    if bank.dim is not None and bank.dim != meta.in_dim:
        raise PipelineError(
            features_dir,
            f"features are {bank.dim}-d, the model expects {meta.in_dim}-d",
            "Use features from the encoder the model was trained on.",
        )
    if not bags:
        raise PipelineError(features_dir, "no slide to predict", "Check the features directory.")
    precision = meta.precision  # as trained, so fold predictions reproduce
    outputs, _, seconds = run_inference(model, task, bags, device, precision)
    if not np.isfinite(outputs).all():  # never a label without a score
        bad = [b.bag_id for b, row in zip(bags, outputs, strict=True) if not np.isfinite(row).all()]
        raise PipelineError(
            model_dir,
            f"the model gave NaN/Inf scores for {len(bad)} bag(s) ({', '.join(bad[:5])})",
            "No predictions were written; check that model and features are intact.",
        )
    result: dict[str, Any] = {
        "predictions": task.prediction_frame(bags, outputs, None),
        "slide_ids": [s for b in bags for s in b.slide_ids],  # what was predicted (not written)
        "method": meta.method,
        "model_dir": str(model_dir),
        "bags": len(bags),
        "inference_slides_per_second": sum(len(b.slide_ids) for b in bags) / max(seconds, 1e-9),
        "missing_slides": bank.missing,
        "empty_slides": bank.empty,
        "optimistic_model": bool(meta.optimistic),
    }
    if labels is not None:
        result["metrics"] = task.metrics({"external": (bags, outputs)}, threshold_role="training")[
            "external"
        ]
        result["threshold"] = getattr(task, "threshold", None)
    log.info(
        "predicted %d bag(s) with %s from %s in %.2f s",
        len(bags),
        meta.method,
        model_dir,
        seconds,
    )
    return result
