"""Figures of the report, returned as PNG/JPEG bytes so the page can embed them.

Kaplan-Meier curves come from lifelines, ROC curves from scikit-learn; matplotlib draws them with
the non-interactive Agg backend (cluster nodes have no display).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _figure(n_panels: int, panel_size: float = 2.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n_panels, 5)
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_size * cols, panel_size * rows), squeeze=False
    )
    for ax in axes.flat[n_panels:]:
        ax.axis("off")
    return fig, list(axes.flat[:n_panels])


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def risk_groups(fold_pred: pd.DataFrame) -> tuple[pd.DataFrame, float, str]:
    """Test cases of one fold split into high/low predicted risk.

    The cut-off is the median risk of the fold's *training* cases, so the test fold does not choose
    its own groups; without training predictions it falls back to the test median (said so).
    """
    roles = fold_pred["role"] if "role" in fold_pred else pd.Series("test", index=fold_pred.index)
    test = fold_pred[roles == "test"].copy()
    train = fold_pred[roles == "train"]
    if len(train):
        cut, source = float(train["risk"].median()), "training median"
    else:
        cut, source = float(test["risk"].median()), "test median"
    test["group"] = np.where(test["risk"] > cut, "high risk", "low risk")
    return test, cut, source


def kaplan_meier(folds: Sequence[tuple[int, pd.DataFrame, dict]], title: str) -> bytes:
    """One panel per fold: KM curves of the high- and low-risk test cases, log-rank p, C-index."""
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    fig, axes = _figure(max(1, len(folds)))
    for ax, (fold, pred, metrics) in zip(axes, folds, strict=False):
        test, _, source = risk_groups(pred)
        for group, colour in (("low risk", "#1f77b4"), ("high risk", "#d62728")):
            part = test[test["group"] == group]
            if len(part):
                km = KaplanMeierFitter(label=f"{group} (n={len(part)})")
                km.fit(part["time"], part["event"])
                km.plot_survival_function(ax=ax, ci_show=False, color=colour, show_censors=True)
        high, low = test[test["group"] == "high risk"], test[test["group"] == "low risk"]
        p_text = ""
        if len(high) and len(low):
            p = logrank_test(high["time"], low["time"], high["event"], low["event"]).p_value
            p_text = f", log-rank p={p:.2g}"
        c_index = metrics.get("test", {}).get("c_index")
        c_text = f"C={c_index:.3f}" if isinstance(c_index, int | float) else "C=n/a"
        ax.set_title(f"fold {fold}: {c_text}{p_text}", fontsize=8)
        ax.set_xlabel("time", fontsize=8)
        ax.set_ylabel("survival", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower left")
        ax.text(
            0.98,
            0.98,
            f"cut: {source}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=6,
            color="grey",
        )
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def roc_curves(folds: Sequence[tuple[int, pd.DataFrame, dict]], title: str) -> bytes | None:
    """ROC curve of each fold's test slides (binary tasks; None when there is nothing to draw)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = _figure(1, panel_size=3.6)
    ax = axes[0]
    drawn = 0
    for fold, pred, _ in folds:
        scores = [c for c in pred.columns if c.startswith("score_")]
        roles = pred["role"] if "role" in pred else pd.Series("test", index=pred.index)
        test = pred[roles == "test"]
        if len(scores) != 2 or "label" not in test or test["label"].nunique() < 2:
            continue
        positive = scores[1].removeprefix("score_")
        y = (test["label"].astype(str) == positive).astype(int)
        fpr, tpr, _ = roc_curve(y, test[scores[1]])
        ax.plot(fpr, tpr, lw=1, label=f"fold {fold} (AUC {roc_auc_score(y, test[scores[1]]):.2f})")
        drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(title, fontsize=9)
    return _png(fig)


def thumbnail(png: str | Path, max_side: int = 320) -> bytes:
    """A small JPEG of a QC picture for the slide table."""
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
