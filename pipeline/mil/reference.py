"""The trivial reference every MIL result should be read against: a linear model on bag means.

Logistic regression (classification) or a ridge Cox model (survival, scikit-survival) on the standardised
mean of each bag's instance features, fitted on the training part only. A MIL method whose test metric
sits below this reference (beyond fold noise) learnt nothing a linear model on bag means could not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.mil.data import Bag


def bag_means(bags: Sequence[Bag]) -> np.ndarray:
    """``[B, D]`` float64: mean instance feature of each bag."""
    return np.stack([b.features().double().mean(0).numpy() for b in bags])


def reference_scores(
    task_type: str, train_bags: Sequence[Bag], test_bags: Sequence[Bag], alpha: float = 1.0
) -> np.ndarray:
    """Positive-class probability (classification) or risk (survival) of ``test_bags``."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(bag_means(train_bags))
    xtr, xte = scaler.transform(bag_means(train_bags)), scaler.transform(bag_means(test_bags))
    if task_type == "classification":
        from sklearn.linear_model import LogisticRegression

        y = np.array([int(b.target) for b in train_bags])
        model = LogisticRegression(C=1.0, max_iter=2000).fit(xtr, y)
        return model.predict_proba(xte)[:, -1]
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    y = Surv.from_arrays([bool(b.target[2]) for b in train_bags], [b.target[1] for b in train_bags])
    return CoxPHSurvivalAnalysis(alpha=alpha, ties="breslow").fit(xtr, y).predict(xte)
