"""The project's metrics: their point estimates (AUC, C-index) and their forms for resampling.

They live here, not in :mod:`pipeline.mil`, because ``stats`` is a foundation the MIL stage uses:
training, evaluation and the statistics compute a metric with the same function, and ``stats``
imports nothing of ``mil``. Both import no torch (scikit-learn and scikit-survival on first use).

Accuracy, balanced accuracy and F1 are functions of the confusion matrix, and a bootstrap replicate's
confusion matrix is the row counts times a one-hot table, so all replicates come from one matrix
product. They follow :func:`pipeline.mil.metrics.classification_metrics` (F1 of the positive = last
class for two classes, macro F1 over all classes otherwise, 0 where undefined; balanced accuracy =
mean recall over the classes present) and take the *hard* predictions already made with each fold's
threshold.

AUC: the point estimate is :func:`auc` (binary, or macro one-vs-rest). Its replicates use the
Mann–Whitney form with case counts as weights (a positive's weight times the weight of the negatives
it outscores, ties one half), sorted once, for every replicate at once; the tests check it equals
:func:`auc` on resampled rows. The C-index is :func:`concordance_index` (Harrell's), called once per
replicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLASSIFICATION_METRICS = ("auc", "accuracy", "balanced_accuracy", "f1")


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (binary) or macro one-vs-rest AUC (multi-class) of class-probability rows; NaN if undefined."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n_classes = probs.shape[1]
    present = np.unique(labels)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(present) < n_classes:
        # macro OvR over the classes present in this part (sklearn's multi-class call needs them all)
        aucs = [roc_auc_score(labels == c, probs[:, c]) for c in present]
        return float(np.mean(aucs))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def concordance_index(times, events, risks) -> float:
    """Harrell's C-index (scikit-survival's ``concordance_index_censored``); NaN if no pair is comparable.

    Ties in risk count one half; an event and a censoring at the same time form a comparable pair.
    """
    from sksurv.exceptions import NoComparablePairException
    from sksurv.metrics import concordance_index_censored

    times = np.asarray(times, dtype=float)
    events = np.asarray(events).astype(bool)
    risks = np.asarray(risks, dtype=float)
    if events.sum() == 0 or len(times) < 2:
        return float("nan")
    try:
        return float(concordance_index_censored(events, times, risks)[0])
    except NoComparablePairException:
        return float("nan")


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


def _weighted_binary_auc(counts: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC per replicate with row weights ``counts (B, N)``; NaN without both classes."""
    order = np.argsort(score, kind="stable")
    s, pos = score[order], positive[order]
    w = np.asarray(counts, dtype=float)[:, order]
    w_neg = np.where(pos, 0.0, w)
    cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w_neg, axis=1)], axis=1)
    start = np.searchsorted(s, s, side="left")  # first row of each row's tie group
    end = np.searchsorted(s, s, side="right")
    below, tied = cum[:, start], cum[:, end] - cum[:, start]
    num = (np.where(pos, w, 0.0) * (below + 0.5 * tied)).sum(axis=1)
    n_pos, n_neg = np.where(pos, w, 0.0).sum(axis=1), w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def _weighted_auc(counts, y, probs) -> np.ndarray:
    """Binary AUC of the last column, or the mean one-vs-rest AUC over the classes present."""
    y, probs = np.asarray(y, dtype=int), np.asarray(probs, dtype=float)
    if probs.shape[1] == 2:
        return _weighted_binary_auc(counts, y == 1, probs[:, 1])
    per_class = np.stack(
        [_weighted_binary_auc(counts, y == c, probs[:, c]) for c in range(probs.shape[1])], axis=1
    )
    present = np.stack([(counts * (y == c)).sum(axis=1) > 0 for c in range(probs.shape[1])], axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(present, per_class, np.nan), axis=1)
    return np.where(present.sum(axis=1) >= 2, mean, np.nan)


def _auc(y, probs) -> float:
    return auc(y, probs)


AUC = Metric("auc", _auc, _weighted_auc)
C_INDEX = Metric("c_index", concordance_index)
