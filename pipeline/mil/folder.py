"""One fold folder's files: the only code that writes or reads ``model.pt``, ``model.json``, ``history.csv``,
``predictions.csv`` and ``metrics.json`` (their names come from :mod:`pipeline.layout`).

Each file is written atomically and ``metrics.json`` last, so a fold is complete exactly when its
metrics exist; a re-run first removes them. ``model.json`` records what is needed to rebuild the network
without the training data (method, input dimension, outputs, the ``mil`` settings, the task), so
``wsi-mil predict`` and an MHIM teacher load a fold the same way. Torch is imported only to save/load
weights, so summaries and reports can read folds without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import layout
from pipeline.checkpoints import load_tensors, save_tensors
from pipeline.errors import PipelineError
from pipeline.store import write_json, write_text


@dataclass(frozen=True)
class ModelRecord:
    """``model.json``: what rebuilds a trained network without its training data.

    ``method`` is the base method (what :func:`pipeline.mil.models.create_mil_model` builds),
    ``variant`` the name of a ``mil.variants`` entry trained from it; ``task`` is the task's own
    metadata (:func:`pipeline.mil.tasks.task_from_metadata`) and ``cfg`` the ``mil`` settings, both
    free-form by design (each task type and method has its keys). ``ensemble`` > 0: model.pt holds
    that many members (``ensemble_members`` their labels). Keys this version does not know are kept
    in ``extra``, so a record written by a newer version still reads.
    """

    method: str
    in_dim: int
    n_outputs: int
    cfg: dict[str, Any]
    task: dict[str, Any] = field(default_factory=dict)
    fold: int | None = None
    precision: str = "fp32"
    protocol: str = "holdout"
    selection: str | None = None
    optimistic: bool = False
    version: str = ""
    variant: str | None = None
    ensemble: int = 0
    ensemble_members: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What the user called it: the variant's name, else the method."""
        return self.variant or self.method

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str | os.PathLike) -> ModelRecord:
        """The record of a ``model.json`` dict; a missing key is one line naming the file."""
        missing = [k for k in ("method", "in_dim", "n_outputs", "cfg") if k not in data]
        if missing:
            raise PipelineError(
                where, f"{layout.MODEL_META} lacks {', '.join(missing)}", "Re-train this fold."
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["in_dim"], values["n_outputs"] = int(data["in_dim"]), int(data["n_outputs"])
        values["fold"] = None if data.get("fold") is None else int(data["fold"])
        values["ensemble"] = int(data.get("ensemble") or 0)
        members = data.get("ensemble_members")
        values["ensemble_members"] = None if members is None else tuple(members)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


class FoldFolder:
    """The files of one trained fold (``.../{method}/fold{k}/``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FoldFolder({str(self.path)!r})"

    def file(self, key: str) -> Path:
        """A file by its key in :data:`pipeline.layout.FOLD_FILES` (``model``, ``metrics`` ...)."""
        return layout.fold_file(self.path, key)

    @property
    def complete(self) -> bool:
        return layout.fold_complete(self.path)

    # --- writing ----------------------------------------------------------------------------------
    def write(
        self,
        model: Any,
        meta: dict[str, Any],
        history: pd.DataFrame,
        predictions: pd.DataFrame,
        metrics: dict[str, Any],
    ) -> None:
        """model.pt (state dict), model.json, history.csv, predictions.csv, then metrics.json — each atomic."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.file("metrics").unlink(missing_ok=True)  # a re-run is incomplete until it is rewritten
        if hasattr(model, "members"):  # an ensemble selection: the models model.pt holds
            meta = {**meta, "ensemble": len(model.members), "ensemble_members": model.labels}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_tensors(state, self.file("model"))  # a full disk is one line naming model.pt
        write_json(self.file("model_json"), meta)
        write_text(self.file("history"), history.to_csv(index=False))
        write_text(self.file("predictions"), predictions.to_csv(index=False))
        write_json(self.file("metrics"), metrics)

    # --- reading ----------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``; a clear error when the fold has not finished."""
        path = self.file("metrics")
        if not path.is_file():
            raise PipelineError(
                self.path,
                f"no {layout.METRICS}: this fold has not finished training",
                "Run (or re-run) `wsi-mil train` for it.",
            )
        return json.loads(path.read_text())

    def model_record(self) -> ModelRecord:
        """``model.json`` alone (no torch): what the fold's model is."""
        path = self.file("model_json")
        return ModelRecord.from_json(json.loads(path.read_text()), path)

    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.file("predictions"))

    def _checkpoint(self, cause: str, remedy: str) -> tuple[ModelRecord, Path]:
        """``(model.json record, model.pt path)``; ``cause``/``remedy`` say what is wrong when either is absent."""
        meta_path, weights = self.file("model_json"), self.file("model")
        if not meta_path.is_file() or not weights.is_file():
            raise PipelineError(
                self.path,
                f"{cause} ({layout.MODEL_WEIGHTS} and {layout.MODEL_META} expected)",
                remedy,
            )
        return ModelRecord.from_json(json.loads(meta_path.read_text()), meta_path), weights

    def load_model(self, device: Any = "cpu") -> tuple[Any, ModelRecord]:
        """``(model in eval mode on device, its model.json record)``, rebuilt from model.json + model.pt."""
        import torch

        from pipeline.device import resolve_device
        from pipeline.mil.models import create_mil_model

        meta, weights = self._checkpoint(
            "no trained model here", "Pass a fold directory written by `wsi-mil train`."
        )

        def build():
            return create_mil_model(meta.method, meta.in_dim, meta.n_outputs, meta.cfg)

        if meta.ensemble:
            from pipeline.mil.models.ensemble import EnsembleMIL

            members = None if meta.ensemble_members is None else list(meta.ensemble_members)
            model = EnsembleMIL([build() for _ in range(meta.ensemble)], members)
        else:
            model = build()
        state = load_tensors(weights, "model weights", "Re-train this fold.")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise PipelineError(
                weights,
                f"weights do not fit the {meta.method} model ({err})",
                f"{layout.MODEL_WEIGHTS} and {layout.MODEL_META} must come from the same training run.",
            ) from err
        device = resolve_device(device) if not isinstance(device, torch.device) else device
        return model.to(device).eval(), meta

    def teacher_state(
        self,
        method: str,
        baseline: str,
        fold: int | None,
        in_dim: int,
        n_outputs: int,
        member: int | None = None,
    ) -> dict[str, Any]:
        """The state dict of this fold's ``baseline`` model, to initialise ``method``'s teacher.

        A baseline saved as an ensemble (``selection: ensemble_full`` / ``ensemble``) gives its inner
        model ``member``: the one trained on the same inner training cases as the MHIM inner model it
        initialises (the inner splits are a function of the outer training part and the seed);
        ``member=None`` (a model trained on the whole training part) takes the baseline's
        whole-training-part member, or its first member when it has none. Every mismatch (another method,
        fold, feature width or number of outputs) is a PipelineError.
        """

        meta, weights = self._checkpoint(
            "teacher checkpoint not found",
            f"Train the {baseline} baseline of this fold into {self.path} first.",
        )
        problems = []
        if meta.method != baseline:
            problems.append(f"it is a {meta.method} model, {method} needs {baseline}")
        if fold is not None and meta.fold is not None and meta.fold != int(fold):
            problems.append(f"it was trained on fold {meta.fold}, this is fold {fold}")
        if meta.in_dim != in_dim or meta.n_outputs != n_outputs:
            problems.append(
                f"it has in_dim {meta.in_dim} / {meta.n_outputs} outputs, "
                f"this run {in_dim} / {n_outputs}"
            )
        if problems:
            raise PipelineError(
                self.path,
                "teacher checkpoint does not match: " + "; ".join(problems),
                f"Pass --teacher-init with the {baseline} model of fold {fold}.",
            )
        state = load_tensors(weights, "teacher weights", "Re-train the baseline.")
        k = meta.ensemble
        if not k:
            return state
        labels = list(meta.ensemble_members or [f"inner{i}" for i in range(k)])
        if member is None:  # a whole-training-part model: the baseline's own, else its first member
            index = labels.index("whole") if "whole" in labels else 0
        else:
            index = int(member)
        if index >= k:
            raise PipelineError(
                self.path,
                f"the {baseline} ensemble has {k} models, {method} needs model {index + 1}",
                f"Train {baseline} and {method} with the same mil.inner_folds.",
            )
        prefix = f"members.{index}."
        return {key[len(prefix) :]: v for key, v in state.items() if key.startswith(prefix)}
