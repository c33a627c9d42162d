"""Train one MIL model on one fold: which bags train and select, the model (and its teacher), the loop,
the scores of every part, and the fold folder.

Under ``protocol: holdout`` the model trains on the fold's *train* part and the *validation* part carved
from the training folds selects the epoch and the decision threshold. Under ``protocol: paper`` the whole
training part (train + val) is trained on and the *test* fold selects the epoch and the threshold, as the
published MHIM-MIL code does; every output then says ``optimistic``. Runs are seeded (``seed``: weights,
bag order, masking) and, on CPU, use deterministic algorithms, so the same command gives the same model.

Jobs live next door: the loop in :mod:`pipeline.mil.loop`, inference in :mod:`pipeline.mil.inference`,
precision and seeding in :mod:`pipeline.mil.precision`, the fold folder's files in
:mod:`pipeline.mil.folder`.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from pipeline import __version__
from pipeline.device import resolve_device
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.epoch import check_survival_loss
from pipeline.mil.folder import FoldFolder
from pipeline.mil.inference import run_inference
from pipeline.mil.loop import FitResult, fit
from pipeline.mil.metrics import OPTIMISTIC_NOTE
from pipeline.mil.models import create_mil_model, method_info
from pipeline.mil.models.ensemble import members
from pipeline.mil.precision import deterministic, seed_everything, training_precision
from pipeline.mil.selection import fit_fold_selected
from pipeline.mil.splits import fold_roles
from pipeline.mil.tasks import Task
from pipeline.settings import MILSettings

log = get_logger("mil.train")
ROLES = ("train", "val", "test")
# metrics.json key of the inner models' out-of-fold outputs on the training part (inner selection)
OUT_OF_FOLD = "inner_out_of_fold"


@dataclass(frozen=True)
class FoldPlan:
    """The bags of each role of one fold, and which of them train and which select (by protocol)."""

    fold: int
    parts: dict[str, list[Bag]]
    paper: bool
    inner: bool = (
        False  # mil.selection other than holdout: val merged into train, selection inside it
    )

    @property
    def train_bags(self) -> list[Bag]:
        return self.parts["train"] + self.parts["val"] if self.paper else self.parts["train"]

    @property
    def threshold_role(self) -> str:
        """The part the Youden threshold comes from: under inner selection the training cases scored
        out of fold by the inner models (not in-sample: those outputs are over-confident)."""
        return OUT_OF_FOLD if self.inner else self.select_role

    @property
    def select_role(self) -> str:
        return "test" if self.paper else "val"

    @property
    def select_bags(self) -> list[Bag]:
        return self.parts[self.select_role]


@dataclass
class FoldResult:
    """A trained fold: ``metrics`` (= metrics.json) and ``meta`` (= model.json) apart from the live model."""

    metrics: dict[str, Any]
    meta: dict[str, Any]
    history: pd.DataFrame
    predictions: pd.DataFrame
    model: torch.nn.Module


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters of one model of the method (an MHIM teacher, updated only by EMA, is not
    counted; an ensemble counts one member: the efficiency table compares methods, not selections)."""
    one = members(model)[0]
    return int(sum(p.numel() for p in one.parameters() if p.requires_grad))


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA allocation when on a GPU), in MB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def assign_roles(bags: Sequence[Bag], roles: dict[str, str]) -> dict[str, list[Bag]]:
    """Bags per role of the fold; a bag whose case is not in the splits means the splits were made
    from another table (stale), which is an error, never a case quietly left out."""
    parts: dict[str, list[Bag]] = {role: [] for role in ROLES}
    unsplit = sorted({bag.case_id for bag in bags if bag.case_id not in roles})
    if unsplit:
        raise PipelineError(
            "splits",
            f"{len(unsplit)} case(s) of the table are not in the splits file "
            f"({', '.join(unsplit[:3])}{', ...' if len(unsplit) > 3 else ''}): "
            "it was made from another table",
            "Make the splits again from this table (`wsi-mil splits`).",
        )
    for bag in bags:
        parts[roles[bag.case_id]].append(bag)
    return parts


def plan_fold(
    bags: Sequence[Bag], splits: pd.DataFrame, fold: int, settings: MILSettings
) -> FoldPlan:
    """Split ``bags`` by the fold's roles; a role the protocol needs but has no bag is an error.

    ``mil.selection`` other than ``holdout`` applies under ``protocol: holdout`` only: the validation
    part joins the training part and the selection happens inside it (:mod:`pipeline.mil.selection`).
    """
    parts, paper = assign_roles(bags, fold_roles(splits, fold)), settings.protocol == "paper"
    inner = not paper and settings.selection != "holdout"
    if inner:
        parts = {"train": parts["train"] + parts["val"], "val": [], "test": parts["test"]}
    plan = FoldPlan(int(fold), parts, paper, inner)
    for role in ("train", "test") if plan.paper or plan.inner else ROLES:
        if not plan.parts[role]:
            raise PipelineError(
                f"fold {fold}",
                f"the {role} part has no bag with features",
                "Check the splits, labels and features directory.",
            )
    return plan


def build_model(
    method: str,
    in_dim: int,
    n_outputs: int,
    settings: MILSettings,
    device: torch.device,
    fold: int,
    teacher_init: str | os.PathLike | None,
    inner: int | None = None,
) -> tuple[torch.nn.Module, str | None]:
    """``(model on device, teacher folder or None)``; an MHIM model's teacher is the fold's baseline
    (for inner-CV model ``inner``, the baseline's inner model of the same inner fold, when the
    baseline was saved as an ensemble)."""
    model = create_mil_model(method, in_dim, n_outputs, settings).to(device)
    if not getattr(model, "needs_teacher", False):
        if teacher_init is not None:
            log.warning(
                "method %s takes no teacher; --teacher-init %s ignored", method, teacher_init
            )
        return model, None
    baseline = method_info(method)["baseline"]
    if teacher_init is None:
        raise PipelineError(
            f"method {method}",
            f"needs a teacher: the {baseline} model trained on the same fold",
            f"Train it first (wsi-mil train --method {baseline} ...) and pass --teacher-init DIR.",
        )
    folder = FoldFolder(teacher_init)
    model.load_teacher(folder.teacher_state(method, baseline, fold, in_dim, n_outputs, inner))
    return model.to(device), str(folder.path)


def score_parts(
    model: torch.nn.Module,
    task: Task,
    plan: FoldPlan,
    device: torch.device,
    precision: str,
) -> tuple[dict[str, Any], float | None]:
    """Outputs of every role's bags, and the test part's inference speed in slides per second."""
    outputs, speed = {}, None
    for role, role_bags in plan.parts.items():
        outputs[role], _, seconds = run_inference(model, task, role_bags, device, precision)
        if role == "test":
            slides = sum(len(b.slide_ids) for b in role_bags)
            speed = slides / seconds if seconds > 0 else None
    return outputs, speed


def fold_predictions(task: Task, plan: FoldPlan, outputs: dict[str, Any]) -> pd.DataFrame:
    """Every bag of the fold with its role and scores (flagged ``optimistic`` under the paper protocol)."""
    frames = [task.prediction_frame(plan.parts[r], outputs[r], r) for r in ROLES if plan.parts[r]]
    predictions = pd.concat(frames, ignore_index=True)
    if plan.paper:
        predictions["optimistic"] = True
    return predictions


def fold_metrics(
    task: Task,
    plan: FoldPlan,
    method: str,
    settings: MILSettings,
    scored: dict[str, Any],
    fitted: FitResult,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``metrics.json`` (``extra``: teacher, efficiency, data report)."""
    paper = plan.paper
    return {
        "method": method,
        "task_type": task.type,
        "fold": plan.fold,
        "seed": settings.seed,
        "protocol": "paper" if paper else "holdout",
        "optimistic": paper,
        "selection": settings.selection if plan.inner else plan.select_role,
        **({"inner_folds": settings.inner_folds} if plan.inner else {}),
        "selection_metric": task.metric_name,
        **({"note": OPTIMISTIC_NOTE} if paper else {}),
        "test": scored["test"],
        "val": scored.get("val"),
        "train": scored.get("train"),
        **{k: v for k, v in scored.items() if k not in ROLES},
        "best_epoch": fitted.best_epoch,
        "epochs_run": fitted.epochs_run,
        "stopped_early": fitted.stopped_early,
        "n_bags": {r: len(plan.parts[r]) for r in plan.parts},
        "teacher": extra["teacher"],
        "efficiency": extra["efficiency"],
        "data": extra["data"],
        "version": __version__,
    }


def model_meta(
    task: Task, plan: FoldPlan, method: str, settings: MILSettings, in_dim: int, precision: str
) -> dict[str, Any]:
    """The content of ``model.json``: what rebuilds the network without the training data."""
    return {
        "method": method,
        "in_dim": in_dim,
        "n_outputs": task.n_outputs,
        "task": task.metadata(),
        "cfg": settings.to_dict(),
        "fold": plan.fold,
        "precision": precision,
        "protocol": "paper" if plan.paper else "holdout",
        "selection": settings.selection if plan.inner else plan.select_role,
        "optimistic": plan.paper,
        "version": __version__,
    }


def _fit_plan(method, task, plan, settings, device, in_dim, precision, teacher_init):
    """``(FitResult, model to save, predictor, teacher folder)``: early stopping, or inner selection."""
    n_out = task.n_outputs
    model, teacher = build_model(method, in_dim, n_out, settings, device, plan.fold, teacher_init)
    log.info(
        "fold %d: %s on %d train / %d %s bags (%d test), %d-d features, %s %s, %s protocol, %s",
        *(plan.fold, method, len(plan.train_bags), len(plan.select_bags), plan.select_role),
        *(len(plan.parts["test"]), in_dim, device, precision),
        "paper (optimistic)" if plan.paper else "holdout",
        f"selection {settings.selection}" if plan.inner else "early stopping",
    )
    if not plan.inner:
        fitted = fit(
            model, task, plan.train_bags, plan.select_bags, settings, device, plan.select_role,
            precision,
        )  # fmt: skip
        return fitted, model, model, teacher

    def build(inner: int | None = None) -> torch.nn.Module:
        return build_model(method, in_dim, n_out, settings, device, plan.fold, teacher_init, inner)[
            0
        ]

    test_cases = [b.case_id for b in plan.parts["test"]]
    fitted, predictor, model = fit_fold_selected(
        build, task, plan.train_bags, settings, device, test_cases, precision
    )
    return fitted, model, predictor, teacher


def train_fold(
    task: Task,
    bags: Sequence[Bag],
    splits: pd.DataFrame,
    fold: int,
    method: str,
    settings: MILSettings,
    outdir: str | os.PathLike | None = None,
    teacher_init: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    data_report: dict[str, Any] | None = None,
    name: str | None = None,
) -> FoldResult:
    """Train ``method`` on fold ``fold``; write the fold folder when ``outdir`` is given.

    ``name`` is a variant's name (``mil.variants``; ``settings`` already carry its overrides): it is
    the ``method`` metrics.json reports, while model.json keeps the base method that rebuilds the model.
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    check_survival_loss(settings.survival_loss, task.type, settings.accumulate)
    plan = plan_fold(bags, splits, fold, settings)
    task.configure(settings)
    task.fit(plan.train_bags)
    task.encode(bags)
    in_dim = int(bags[0].features().shape[1])
    precision = training_precision(settings.precision, device, in_dim * settings.hidden_dim)
    seed_everything(settings.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with deterministic(device):
        fitted, model, predictor, teacher = _fit_plan(
            method, task, plan, settings, device, in_dim, precision, teacher_init
        )
        outputs, speed = score_parts(predictor, task, plan, device, precision)
    parts = {r: (plan.parts[r], outputs[r]) for r in plan.parts if plan.parts[r]}
    if fitted.out_of_fold is not None:  # inner selection: each training case scored out of fold
        parts[OUT_OF_FOLD] = fitted.out_of_fold
    scored = task.metrics(parts, threshold_role=plan.threshold_role)
    efficiency = {
        "parameters": count_parameters(model),
        "train_seconds_per_epoch": fitted.train_seconds_per_epoch,
        "inference_slides_per_second": speed,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        **peak_memory_mb(device),
    }
    extra = {"teacher": teacher, "efficiency": efficiency, "data": data_report or {}}
    metrics = fold_metrics(task, plan, name or method, settings, scored, fitted, extra)
    metrics["base_method"] = method
    log.info(
        "fold %d done: test %s%s, best epoch %d of %d, %.2f s/epoch",
        plan.fold,
        ", ".join(f"{k} {v:.4f}" for k, v in scored["test"].items() if isinstance(v, float)),
        " (OPTIMISTIC: paper protocol)" if plan.paper else "",
        *(fitted.best_epoch, fitted.epochs_run, fitted.train_seconds_per_epoch),
    )
    meta = {**model_meta(task, plan, method, settings, in_dim, precision), "variant": name}
    result = FoldResult(metrics, meta, fitted.history, fold_predictions(task, plan, outputs), model)
    if outdir is not None:
        FoldFolder(outdir).write(model, meta, result.history, result.predictions, metrics)
    return result


def prepare_data(
    task: Task, features_dir: str | os.PathLike
) -> tuple[list[Bag], FeatureBank, dict]:
    """Load the task's slides from ``features_dir`` once and build its bags; report what was left out."""
    bank = FeatureBank.load(features_dir, task.wanted_slides())
    bags = task.make_bags(bank)
    if not bags:
        raise PipelineError(
            features_dir,
            "no labelled slide has a feature store here",
            "Check that the store names (file stems) match the slide_id column.",
        )
    report = {
        "missing_slides": bank.missing,
        "empty_slides": bank.empty,
        "unlabelled_slides": bank.unlabelled,
        "bags": len(bags),
    }
    return bags, bank, report
