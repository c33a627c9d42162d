"""``predictions.csv`` of a fold, per task type: one row per bag and role with its ids, what is known
of its label and the model's scores. Kept apart from the tasks' training logic because the frames are
a file format (docs/architecture.md §2), read back by the summary, the report and the heatmaps."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.mil import metrics as M


def classification_frame(bags, outputs, role, classes, threshold) -> pd.DataFrame:
    """predictions.csv of a classification task: ids, role, label, one score column per class and
    the hard prediction (at ``threshold`` for two classes, argmax otherwise)."""
    df = pd.DataFrame(
        {
            "slide_id": [b.bag_id for b in bags],
            "case_id": [b.case_id for b in bags],
        }
    )
    if role is not None:
        df["role"] = role
    if bags and bags[0].target is not None:
        df["label"] = [classes[int(b.target)] for b in bags]
    scores = pd.DataFrame(
        np.asarray(outputs).reshape(len(bags), -1), columns=[f"score_{c}" for c in classes]
    )
    df = pd.concat([df, scores], axis=1)
    pred = (
        M.hard_predictions(np.asarray(outputs).reshape(len(bags), -1), threshold)
        if len(bags)
        else []
    )
    df["prediction"] = [classes[i] for i in pred]
    return df


def survival_frame(bags, outputs, role, columns) -> pd.DataFrame:
    """predictions.csv of a survival task: the case, its slides, role, time/event/bin when known,
    and the ``columns`` of the outputs (risk, then the survival curve)."""
    df = pd.DataFrame(
        {
            "case_id": [b.case_id for b in bags],
            "slide_ids": [";".join(b.slide_ids) for b in bags],
        }
    )
    if role is not None:
        df["role"] = role
    if bags and bags[0].target is not None:
        t = np.array([b.target[1] for b in bags], dtype=float)
        e = np.array([b.target[2] for b in bags], dtype=int)
        df["time"], df["event"] = t, e
        df["bin"] = [b.target[0] for b in bags]
    scores = pd.DataFrame(np.asarray(outputs).reshape(len(bags), -1), columns=columns)
    return pd.concat([df, scores], axis=1)
