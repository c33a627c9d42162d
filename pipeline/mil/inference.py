"""A trained model's outputs on a list of bags: the one inference path training, selection and
``wsi-mil predict`` share, so fold predictions and external predictions are computed alike."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.device import autocast_context
from pipeline.mil.data import Bag
from pipeline.mil.models.ensemble import members
from pipeline.mil.precision import INPUT_DTYPES
from pipeline.mil.tasks import Task


@torch.no_grad()
def run_inference(
    model: torch.nn.Module,
    task: Task,
    bags: Sequence[Bag],
    device: torch.device,
    precision: str = "fp32",
) -> tuple[np.ndarray, float, float]:
    """``(outputs [B, k], mean loss (NaN without targets), seconds)`` of the model on ``bags`` in eval mode.

    An ensemble's outputs are its members' outputs averaged, its loss the members' mean loss."""
    model.eval()
    models = members(model)
    rows, losses = [], []
    dtype = INPUT_DTYPES[precision]
    start = time.perf_counter()
    for bag in bags:
        x = bag.features(dtype).to(device)
        outs, bag_losses = [], []
        for m in models:
            with autocast_context(precision, device):
                logits = m(x)["logits"].float()
            outs.append(task.outputs(logits)[0])
            if bag.target is not None:
                bag_losses.append(float(task.loss_fn(bag)(logits)))
        rows.append(np.mean(outs, axis=0) if len(outs) > 1 else outs[0])
        if bag_losses:
            losses.append(float(np.mean(bag_losses)))
    seconds = time.perf_counter() - start
    outputs = np.stack(rows) if rows else np.zeros((0, len(task.output_columns())))
    return outputs, (float(np.mean(losses)) if losses else float("nan")), seconds
