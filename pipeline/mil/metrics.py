"""Classification metrics with the protocol's rules: AUC, accuracy, balanced accuracy, F1, Youden threshold.

* AUC: binary = ROC AUC of the positive (last) class score; multi-class = macro one-vs-rest.
* Accuracy, balanced accuracy and F1 need hard predictions. Binary: ``score >= threshold`` where the
  threshold maximises Youden's J (TPR - FPR) on the *validation* part (never the test fold, except under
  ``protocol: paper``, which is labelled optimistic); F1 is the positive class's. Multi-class: argmax,
  macro F1.
* A metric that is undefined on the given data (one class only) is NaN, never an exception, so a small
  validation part cannot crash training.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from pipeline.stats.metrics import CLASSIFICATION_METRICS, auc

OPTIMISTIC_NOTE = (
    "protocol 'paper': the test fold selected the epoch and the threshold, as in the published code; "
    "these figures are OPTIMISTIC and not comparable with held-out validation results"
)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Threshold on the positive-class score maximising TPR - FPR; 0.5 when undefined (one class only).

    The returned value lies midway between the last score counted positive and the next lower score, so
    it does not sit exactly on a validation score (which would make test predictions tie-sensitive).
    """
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    j = tpr - fpr
    best = int(np.argmax(j))  # first = highest threshold among ties
    hi = thresholds[best]
    lower = scores[scores < hi]
    if not math.isfinite(hi):
        return 0.5
    if lower.size == 0:
        return float(hi) / 2
    return float((hi + lower.max()) / 2)


def hard_predictions(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class index per row: positive-score threshold for binary, argmax otherwise."""
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float | None
) -> dict[str, float]:
    """AUC, accuracy, balanced accuracy and F1 (module docstring rules)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(labels) == 0:
        return {k: float("nan") for k in CLASSIFICATION_METRICS}
    pred = hard_predictions(probs, threshold)
    binary = probs.shape[1] == 2
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = {
                "auc": auc(labels, probs),
                "accuracy": float(accuracy_score(labels, pred)),
                "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
                "f1": float(
                    f1_score(
                        labels,
                        pred,
                        average="binary" if binary else "macro",
                        labels=None if binary else list(range(probs.shape[1])),
                        zero_division=0,
                    )
                ),
            }
    return out


def mean_std(values) -> dict[str, float | int]:
    """Mean and population std (ddof=0, as the MHIM-MIL and CLAM reports) over the finite values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}
