"""The project's metrics as callables for resampling, with a vectorised form where one is cheap.

Accuracy, balanced accuracy and F1 are functions of the confusion matrix, and a bootstrap replicate's
confusion matrix is the row counts times a one-hot table, so all replicates come from one matrix
product. They follow :mod:`pipeline.mil.metrics` (F1 of the positive = last class for two classes,
macro F1 over all classes otherwise, 0 where undefined; balanced accuracy = mean recall over the
classes present) and take the *hard* predictions already made with each fold's threshold.

AUC and the C-index are the project's own functions (``pipeline.mil.metrics.auc`` and
``pipeline.mil.survival.concordance_index``), called once per replicate. The C-index module uses torch,
so it is imported on first use only: ``pipeline.stats`` itself imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.mil import metrics as M


@dataclass(frozen=True)
class Metric:
    """``fn(*arrays) -> float``; ``weighted(counts (B, N), *arrays) -> (B,)`` when vectorisable."""

    name: str
    fn: Callable[..., float]
    weighted: Callable[..., np.ndarray] | None = None

    def __call__(self, *arrays) -> float:
        return float(self.fn(*arrays))


def _confusion(counts: np.ndarray, y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(B, C, C)`` weighted confusion matrices (rows = truth, columns = prediction)."""
    cell = np.asarray(y, dtype=int) * n_classes + np.asarray(pred, dtype=int)
    onehot = np.zeros((len(cell), n_classes * n_classes))
    onehot[np.arange(len(cell)), cell] = 1.0
    return (np.asarray(counts, dtype=float) @ onehot).reshape(-1, n_classes, n_classes)


def _from_confusion(name: str, cm: np.ndarray) -> np.ndarray:
    diag = np.diagonal(cm, axis1=1, axis2=2)
    truth, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "accuracy":
            return diag.sum(axis=1) / cm.sum(axis=(1, 2))
        if name == "balanced_accuracy":
            recall = np.where(truth > 0, diag / truth, np.nan)
            return np.nanmean(recall, axis=1)
        denom = truth + predicted  # 2TP + FP + FN per class
        f1 = np.where(denom > 0, 2 * diag / np.where(denom > 0, denom, 1), 0.0)
        return f1[:, -1] if cm.shape[1] == 2 else f1.mean(axis=1)


def hard_metric(name: str, n_classes: int) -> Metric:
    """Accuracy, balanced accuracy or F1 of ``(y, pred)`` class indices, vectorised over replicates."""
    if name not in ("accuracy", "balanced_accuracy", "f1"):
        raise ValueError(f"not a hard-prediction metric: {name}")

    def weighted(counts, y, pred):
        return _from_confusion(name, _confusion(counts, y, pred, n_classes))

    def fn(y, pred):
        return weighted(np.ones((1, len(y))), y, pred)[0]

    return Metric(name, fn, weighted)


def _auc(y, probs) -> float:
    return M.auc(y, probs)


def _c_index(time, event, risk) -> float:
    from pipeline.mil.survival import concordance_index  # torch: imported on use only

    return concordance_index(time, event, risk)


AUC = Metric("auc", _auc)
C_INDEX = Metric("c_index", _c_index)
