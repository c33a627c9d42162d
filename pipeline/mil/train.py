"""Train one MIL model on one fold: the single training loop every method and task goes through.

Protocol (DESIGN §6): batch size one bag, Adam (``lr``, ``weight_decay``), cosine learning-rate schedule
over ``epochs``, early stopping when the selection score has not improved for ``patience`` epochs, and
the best epoch's weights restored. The selection score is the task's metric (AUC; C-index) on the
*validation* part carved from the training folds, ties broken by the lower validation loss. Under
``protocol: paper`` the whole training part (train + val) is trained on and the *test* fold selects the
epoch and the threshold, as the published MHIM-MIL code does; every output then says ``optimistic``.

Runs are seeded (``seed``: weights, bag order, masking) and, on CPU, use deterministic algorithms, so
the same command gives the same model. Outputs of a fold directory are each written atomically;
``metrics.json`` is written last and marks the fold complete.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline import __version__
from pipeline.checkpoints import save_tensors
from pipeline.device import autocast_context, native_bf16, resolve_device
from pipeline.errors import PipelineError
from pipeline.log import get_logger
from pipeline.mil.data import Bag, FeatureBank
from pipeline.mil.metrics import OPTIMISTIC_NOTE
from pipeline.mil.splits import fold_roles
from pipeline.mil.tasks import Task
from pipeline.store import write_json, write_text

log = get_logger("mil.train")
PRECISIONS = ("auto", "fp32", "bf16")
INPUT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# in_dim x hidden_dim from which bf16 autocast pays (1024-d WSI features x 512: 2**19)
BF16_MIN_PROJECTION = 2**17


def training_precision(
    name: str | None, device: torch.device, projection: int | None = None
) -> str:
    """``auto`` = bf16 autocast where it is a speed-up, else fp32.

    MIL training on WSI features is bound by the instance projection's matmuls; bf16 runs them about
    twice as fast where the hardware multiplies bfloat16 natively (AVX512-BF16 / AMX CPUs, bf16 GPUs),
    with the same accuracy on our benchmarks (BENCHMARKS.md). For small projections (``projection`` =
    in_dim x hidden_dim below ``BF16_MIN_PROJECTION``, e.g. the 166-d MIL benchmark sets) autocast's
    per-op casts cost more than they save, so ``auto`` stays fp32. The optimiser and its state, the
    loss, and the TransMIL landmark pseudo-inverse stay float32 in any case.
    """
    name = name or "auto"
    if name == "auto":
        big = projection is None or projection >= BF16_MIN_PROJECTION
        return "bf16" if big and native_bf16(device) else "fp32"
    if name not in PRECISIONS:
        raise PipelineError(
            "mil.precision", f"unknown precision {name!r}", f"Use {' | '.join(PRECISIONS)}."
        )
    return name


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CPU for the duration (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable parameters (an MHIM teacher, updated only by EMA, is not counted)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA allocation when on a GPU), in MB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


@torch.no_grad()
def run_inference(
    model: torch.nn.Module,
    task: Task,
    bags: Sequence[Bag],
    device: torch.device,
    precision: str = "fp32",
) -> tuple[np.ndarray, float, float]:
    """``(outputs [B, k], mean loss (NaN without targets), seconds)`` of the model on ``bags`` in eval mode."""
    model.eval()
    rows, losses = [], []
    dtype = INPUT_DTYPES[precision]
    start = time.perf_counter()
    for bag in bags:
        with autocast_context(precision, device):
            logits = model(bag.features(dtype).to(device))["logits"].float()
        rows.append(task.outputs(logits)[0])
        if bag.target is not None:
            losses.append(float(task.loss_fn(bag)(logits)))
    seconds = time.perf_counter() - start
    outputs = np.stack(rows) if rows else np.zeros((0, len(task.output_columns())))
    return outputs, (float(np.mean(losses)) if losses else float("nan")), seconds


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    loss_fn,
    progress: float,
    precision: str,
) -> float:
    """One bag: forward under ``precision`` autocast, float32 loss, backward, Adam step, EMA hooks."""
    with autocast_context(precision, x.device):
        loss, _ = model.training_loss(x, lambda logits: loss_fn(logits.float()), progress)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.after_optimizer_step()
    return float(loss.detach())


@dataclass
class FitResult:
    history: pd.DataFrame
    best_epoch: int
    best_score: float
    epochs_run: int
    train_seconds_per_epoch: float
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(params: list[torch.nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam with the fused kernel where available (4x less per-step overhead than the loop on CPU)."""
    kwargs = {"lr": float(cfg["lr"]), "weight_decay": float(cfg["weight_decay"])}
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # device/dtype without a fused kernel
        return torch.optim.Adam(params, **kwargs)


def _key(score: float, loss: float) -> tuple[float, float]:
    return (
        score if math.isfinite(score) else -math.inf,
        -loss if math.isfinite(loss) else -math.inf,
    )


def fit(
    model: torch.nn.Module,
    task: Task,
    train_bags: Sequence[Bag],
    select_bags: Sequence[Bag],
    cfg: dict[str, Any],
    device: torch.device,
    select_label: str = "val",
    precision: str = "fp32",
) -> FitResult:
    """Train ``model`` in place and leave the best epoch's weights in it (see module docstring)."""
    if not train_bags:
        raise PipelineError("train", "no training bags", "Check the labels, splits and features.")
    epochs, patience = int(cfg["epochs"]), int(cfg["patience"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    rng = np.random.default_rng(int(cfg["seed"]))
    best_key, best_state, best_epoch, best_score = None, None, 0, float("nan")
    rows, train_seconds, since_best = [], [], 0
    n = len(train_bags)
    metric = task.metric_name
    monitor = cfg.get("monitor", "metric")
    dtype = INPUT_DTYPES[precision]
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        total = 0.0
        for i, idx in enumerate(rng.permutation(n)):
            bag = train_bags[idx]
            progress = ((epoch - 1) * n + i) / (epochs * n)
            x = bag.features(dtype).to(device)
            total += train_step(model, optimizer, x, task.loss_fn(bag), progress, precision)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_seconds.append(time.perf_counter() - start)
        outputs, sel_loss, _ = run_inference(model, task, select_bags, device, precision)
        score = task.selection_score(select_bags, outputs)
        key = _key(score, sel_loss) if monitor == "metric" else _key(-sel_loss, score)
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_epoch, best_score, since_best = key, epoch, score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
        rows.append(
            {
                "epoch": epoch,
                "train_loss": total / n,
                f"{select_label}_loss": sel_loss,
                f"{select_label}_{metric}": score,
                "lr": lr,
                "train_seconds": train_seconds[-1],
                "best": improved,
            }
        )
        log.info(
            "epoch %d/%d: loss %.4f, %s %s %.4f (loss %.4f), %.2f s/epoch, best %.4f @ epoch %d",
            epoch,
            epochs,
            total / n,
            select_label,
            metric,
            score,
            sel_loss,
            train_seconds[-1],
            best_score,
            best_epoch,
        )
        if since_best >= patience:
            log.info("early stop: no improvement for %d epochs", patience)
            break
    model.load_state_dict(best_state)
    return FitResult(
        history=pd.DataFrame(rows),
        best_epoch=best_epoch,
        best_score=best_score,
        epochs_run=len(rows),
        train_seconds_per_epoch=float(np.mean(train_seconds)),
        stopped_early=len(rows) < epochs,
    )


# --- one fold, end to end ---------------------------------------------------------------------------
def load_teacher(
    model: torch.nn.Module,
    method: str,
    teacher_dir: str | os.PathLike | None,
    fold: int | None,
    in_dim: int,
    n_outputs: int,
) -> str:
    """Load the fold's baseline checkpoint as ``model``'s teacher; every mismatch is a PipelineError."""
    from pipeline.mil.models import method_info

    baseline = method_info(method)["baseline"]
    if teacher_dir is None:
        raise PipelineError(
            f"method {method}",
            f"needs a teacher: the {baseline} model trained on the same fold",
            f"Train it first (wsi-mil train --method {baseline} ...) and pass --teacher-init DIR.",
        )
    d = Path(teacher_dir)
    weights, meta_path = d / "model.pt", d / "model.json"
    if not weights.is_file() or not meta_path.is_file():
        raise PipelineError(
            d,
            "teacher checkpoint not found (model.pt and model.json expected)",
            f"Train the {baseline} baseline of this fold into {d} first.",
        )
    meta = json.loads(meta_path.read_text())
    problems = []
    if meta.get("method") != baseline:
        problems.append(f"it is a {meta.get('method')} model, {method} needs {baseline}")
    if fold is not None and meta.get("fold") is not None and int(meta["fold"]) != int(fold):
        problems.append(f"it was trained on fold {meta['fold']}, this is fold {fold}")
    if int(meta.get("in_dim", -1)) != in_dim or int(meta.get("n_outputs", -1)) != n_outputs:
        problems.append(
            f"it has in_dim {meta.get('in_dim')} / {meta.get('n_outputs')} outputs, "
            f"this run {in_dim} / {n_outputs}"
        )
    if problems:
        raise PipelineError(
            d,
            "teacher checkpoint does not match: " + "; ".join(problems),
            f"Pass --teacher-init with the {baseline} model of fold {fold}.",
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PipelineError(
            weights, f"cannot read teacher weights ({err})", "Re-train the baseline."
        ) from err
    model.load_teacher(state)
    return str(d)


def assign_roles(bags: Sequence[Bag], roles: dict[str, str]) -> dict[str, list[Bag]]:
    """Bags per role of the fold; bags whose case is not in the splits are reported and left out."""
    parts: dict[str, list[Bag]] = {"train": [], "val": [], "test": []}
    for bag in bags:
        role = roles.get(bag.case_id)
        if role is None:
            log.warning("case %s: not in the splits file; left out", bag.case_id)
            continue
        parts[role].append(bag)
    return parts


def train_fold(
    task: Task,
    bags: Sequence[Bag],
    splits: pd.DataFrame,
    fold: int,
    method: str,
    cfg: dict[str, Any],
    outdir: str | os.PathLike | None = None,
    teacher_init: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    data_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on fold ``fold``; write the fold directory when ``outdir`` is given; return metrics.

    Returned dict = the content of ``metrics.json``, plus ``model`` (the trained module) and
    ``predictions`` (DataFrame) for callers that stay in Python.
    """
    from pipeline.mil.models import create_mil_model

    device = resolve_device(device) if not isinstance(device, torch.device) else device
    parts = assign_roles(bags, fold_roles(splits, fold))
    paper = cfg.get("protocol", "holdout") == "paper"
    if paper:
        train_bags, select_bags, select_role = parts["train"] + parts["val"], parts["test"], "test"
    else:
        train_bags, select_bags, select_role = parts["train"], parts["val"], "val"
    for role in ("train", "test") if paper else ("train", "val", "test"):
        if not parts[role]:
            raise PipelineError(
                f"fold {fold}",
                f"the {role} part has no bag with features",
                "Check the splits, labels and features directory.",
            )
    task.configure(cfg)
    task.fit(train_bags)
    task.encode(bags)
    in_dim = int(bags[0].features().shape[1])
    precision = training_precision(cfg.get("precision"), device, in_dim * int(cfg["hidden_dim"]))
    seed = int(cfg["seed"])
    seed_everything(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with deterministic(device):
        model = create_mil_model(method, in_dim, task.n_outputs, cfg).to(device)
        teacher = None
        if getattr(model, "needs_teacher", False):
            teacher = load_teacher(model, method, teacher_init, fold, in_dim, task.n_outputs)
            model.to(device)
        elif teacher_init is not None:
            log.warning(
                "method %s takes no teacher; --teacher-init %s ignored", method, teacher_init
            )
        log.info(
            "fold %d: %s on %d train / %d %s bags (%d test), %d-d features, %s %s, %s protocol",
            fold,
            method,
            len(train_bags),
            len(select_bags),
            select_role,
            len(parts["test"]),
            in_dim,
            device,
            precision,
            "paper (optimistic)" if paper else "holdout",
        )
        result = fit(
            model,
            task,
            train_bags,
            select_bags,
            cfg,
            device,
            select_label=select_role,
            precision=precision,
        )
        outputs = {}
        infer_seconds, infer_slides = 0.0, 0
        for role, role_bags in parts.items():
            outputs[role], _, seconds = run_inference(model, task, role_bags, device, precision)
            if role == "test":
                infer_seconds = seconds
                infer_slides = sum(len(b.slide_ids) for b in role_bags)
    scored = task.metrics(
        {r: (parts[r], outputs[r]) for r in parts if parts[r]}, threshold_role=select_role
    )
    efficiency = {
        "parameters": count_parameters(model),
        "train_seconds_per_epoch": result.train_seconds_per_epoch,
        "inference_slides_per_second": infer_slides / infer_seconds if infer_seconds > 0 else None,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        **peak_memory_mb(device),
    }
    metrics = {
        "method": method,
        "task_type": task.type,
        "fold": int(fold),
        "seed": seed,
        "protocol": "paper" if paper else "holdout",
        "optimistic": paper,
        "selection": select_role,
        "selection_metric": task.metric_name,
        **({"note": OPTIMISTIC_NOTE} if paper else {}),
        "test": scored["test"],
        "val": scored.get("val"),
        "train": scored.get("train"),
        **{k: v for k, v in scored.items() if k not in ("train", "val", "test")},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "n_bags": {r: len(parts[r]) for r in parts},
        "teacher": teacher,
        "efficiency": efficiency,
        "data": data_report or {},
        "version": __version__,
    }
    predictions = pd.concat(
        [
            task.prediction_frame(parts[r], outputs[r], r)
            for r in ("train", "val", "test")
            if parts[r]
        ],
        ignore_index=True,
    )
    if paper:
        predictions["optimistic"] = True
    log.info(
        "fold %d done: test %s%s, best epoch %d of %d, %.2f s/epoch",
        fold,
        ", ".join(f"{k} {v:.4f}" for k, v in scored["test"].items() if isinstance(v, float)),
        " (OPTIMISTIC: paper protocol)" if paper else "",
        result.best_epoch,
        result.epochs_run,
        result.train_seconds_per_epoch,
    )
    if outdir is not None:
        model_meta = {
            "method": method,
            "in_dim": in_dim,
            "n_outputs": task.n_outputs,
            "task": task.metadata(),
            "cfg": cfg,
            "fold": int(fold),
            "precision": precision,
            "protocol": metrics["protocol"],
            "optimistic": paper,
            "version": __version__,
        }
        write_fold_outputs(outdir, model, model_meta, result.history, predictions, metrics)
    return {**metrics, "model": model, "predictions": predictions, "history": result.history}


def write_fold_outputs(outdir, model, model_meta, history, predictions, metrics) -> None:
    """model.pt (state dict), model.json, history.csv, predictions.csv, then metrics.json — each atomic."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # a re-run is incomplete until it is rewritten
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_tensors(state, out / "model.pt")  # a full disk is one line naming the file
    write_json(out / "model.json", model_meta)
    write_text(out / "history.csv", history.to_csv(index=False))
    write_text(out / "predictions.csv", predictions.to_csv(index=False))
    write_json(out / "metrics.json", metrics)


# --- inputs -------------------------------------------------------------------------------------------
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


def merge_cfg(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with dotted ``key=value`` overrides applied (``mhim.rhsm_ratio=0.01``), as a new dict."""
    out = copy.deepcopy(cfg)
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "mhim.rhsm_ratio=0.01", "embed_dims=[256,128,64]"]`` → dict (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(
                f"override '{item}'",
                "expected key=value",
                "Example: epochs=50 mhim.rhsm_ratio=0.01",
            )
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "5e-4" as text
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def build_cfg(config: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The ``mil`` section of ``config`` (defaults when None) with ``key=value`` overrides applied.

    Overrides of keys the config schema knows are validated by it (one line per bad key); other keys are
    model-specific (``embed_dims`` ...) and checked by the model when it is built.
    """
    from pipeline.config import load_schema, section, validate_config

    cfg = merge_cfg(section(config, "mil"), parse_overrides(overrides))
    known = load_schema()["properties"]["mil"]["properties"]
    standard = {k: v for k, v in cfg.items() if k in known}
    base = {
        "slides_dir": "",
        "results_dir": "",
        "tasks": [{"name": "x", "type": "classification", "table": ""}],
    }
    validate_config({**base, "mil": standard}, source="mil config (with overrides)")
    return cfg
