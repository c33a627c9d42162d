"""Seeded synthetic MIL cohorts for the model-selection experiments (issue 17): bags of 150-500 x 64.

* ``dense`` classification: every positive bag has a weak shift along a direction ``u`` in a large
  fraction of its instances (the bag mean carries the signal); both classes carry a few *misleading*
  salient instances (a strong shift along another direction ``v``, unrelated to the label) that
  attention is tempted to follow.
* ``sparse`` classification: the evidence is a handful of instances (3-8) of positive bags shifted along
  ``u``; the mean dilutes it, attention can find it. Misleading instances as in ``dense``.
* ``survival``: case burden ``b ~ U(0, 0.5)`` = fraction of instances shifted along ``u``; the log-hazard
  is linear in ``b`` (exponential times, uniform censoring); ``truth`` holds the true log-hazard, whose
  C-index is the ceiling any model can reach on the set.

Every set comes back as in-memory bags over a :class:`~pipeline.mil.data.FeatureBank` with its task, so
the trainer runs on it exactly as on extracted features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.mil.data import FeatureBank
from pipeline.mil.tasks import ClassificationTask, SurvivalTask


@dataclass
class SyntheticSet:
    name: str
    task: object
    bags: list
    truth: np.ndarray  # per bag: label (classification) or true log-hazard (survival)


def _directions(rng, dim):
    u, v = rng.normal(size=(2, dim))
    u /= np.linalg.norm(u)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return u, v


def _instances(rng, n_min, n_max, dim, v, misleading):
    n = int(rng.integers(n_min, n_max + 1))
    x = rng.normal(size=(n, dim))
    k = int(rng.integers(0, misleading + 1))
    if k:
        x[rng.choice(n, k, replace=False)] += 4.0 * v
    return x


def classification_set(
    kind: str = "dense",
    n_bags: int = 120,
    dim: int = 64,
    seed: int = 0,
    n_min: int = 150,
    n_max: int = 500,
    shift: float | None = None,
    misleading: int = 10,
) -> SyntheticSet:
    """Binary bags (half positive): ``kind`` dense (weak shift in 30-60 % of instances) or sparse (3-8)."""
    rng = np.random.default_rng(seed)
    u, v = _directions(rng, dim)
    arrays, rows = {}, []
    for i in range(n_bags):
        label = i % 2
        x = _instances(rng, n_min, n_max, dim, v, misleading)
        if label:
            n = len(x)
            if kind == "dense":
                k = int(rng.uniform(0.3, 0.6) * n)
                amount = 0.2 if shift is None else shift
            else:
                k = int(rng.integers(3, 9))
                amount = 3.0 if shift is None else shift
            x[rng.choice(n, k, replace=False)] += amount * u
        arrays[f"b{i:04d}"] = x.astype(np.float32)
        rows.append((f"b{i:04d}", f"b{i:04d}", label))
    table = pd.DataFrame(rows, columns=["slide_id", "case_id", "label"])
    task = ClassificationTask(table, source=f"synthetic {kind}")
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    return SyntheticSet(f"{kind}-{n_bags}", task, bags, table["label"].to_numpy())


def survival_set(
    n_cases: int = 160,
    dim: int = 64,
    seed: int = 0,
    n_min: int = 150,
    n_max: int = 500,
    shift: float = 2.0,
    beta: float = 16.0,
    censor_fraction: float = 0.35,
    misleading: int = 10,
    n_bins: int = 4,
) -> SyntheticSet:
    """Cases with burden ``b ~ U(0, 0.5)``; hazard ``exp(beta * b)``; ~``censor_fraction`` censored."""
    rng = np.random.default_rng(seed)
    u, v = _directions(rng, dim)
    arrays, rows, log_hazard = {}, [], []
    for c in range(n_cases):
        x = _instances(rng, n_min, n_max, dim, v, misleading)
        b = rng.uniform(0.0, 0.5)
        k = int(round(b * len(x)))
        if k:
            x[rng.choice(len(x), k, replace=False)] += shift * u
        lh = beta * k / len(x)
        t = rng.exponential(10.0 * np.exp(-lh))
        event = int(rng.random() >= censor_fraction)
        if not event:
            t *= rng.uniform(0.1, 1.0)
        arrays[f"c{c:04d}"] = x.astype(np.float32)
        rows.append((f"c{c:04d}", round(float(t), 4), event))
        log_hazard.append(lh)
    table = pd.DataFrame(rows, columns=["case_id", "time", "event"])
    task = SurvivalTask(table, None, n_bins=n_bins, source="synthetic survival")
    bags = task.make_bags(FeatureBank.from_arrays(arrays))
    return SyntheticSet(f"survival-{n_cases}", task, bags, np.array(log_hazard))


def true_risk_c_index(s: SyntheticSet) -> float:
    """C-index of the true log-hazard on the whole set (the ceiling a model can reach)."""
    from pipeline.stats.metrics import concordance_index

    t = np.array([b.target[1] for b in s.bags])
    e = np.array([b.target[2] for b in s.bags])
    return concordance_index(t, e, s.truth)


SETS = {
    "dense-120": lambda seed=0: classification_set("dense", 120, seed=seed),
    "sparse-120": lambda seed=0: classification_set("sparse", 120, seed=seed),
    "dense-400": lambda seed=0: classification_set("dense", 400, seed=seed),
    "sparse-400": lambda seed=0: classification_set("sparse", 400, seed=seed),
    "survival-160": lambda seed=0: survival_set(160, seed=seed),
    "survival-400": lambda seed=0: survival_set(400, seed=seed),
}
