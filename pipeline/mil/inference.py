"""A trained model's outputs on a list of bags: the one inference path training, selection and
``wsi-mil predict`` share, so fold predictions and external predictions are computed alike."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.device import autocast_context
from pipeline.mil.data import Bag
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
