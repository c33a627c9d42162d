"""Localisation: does a score map find the tumour? Per-slide AUC of patch scores against patch truth.

A patch is tumour when at least ``threshold`` (0.5) of its area lies in the slide's tumour mask; the
fraction is measured exactly from the mask's integral image (the tiling code's
:func:`pipeline.tiling.tissue_fraction`, evaluated on the grid spanned by the patches' coordinates). The
AUC is undefined (None) for a slide whose patches are all tumour or all normal (e.g. negative slides):
summaries are over the positive slides where it is defined.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.tiling import tissue_fraction


def read_tumour_mask(masks_json: str | os.PathLike, slide_id: str) -> tuple[np.ndarray, float]:
    """A slide's tumour mask (bool) and level-0 px per mask px, as ``wsi-mil synth`` writes them.

    Format (``masks/masks.json`` of a synthetic cohort): ``slides[slide_id]`` gives ``tumor_mask`` (a PNG
    path relative to the cohort directory, 255 = tumour) and ``mask_downsample`` (mask pixel (i, j)
    covers level-0 x in [j*d, (j+1)*d), y in [i*d, (i+1)*d)). The only function that knows this format.
    """
    path = Path(masks_json)
    try:
        entry = json.loads(path.read_text())["slides"][slide_id]
        png = path.parent.parent / entry["tumor_mask"]
        downsample = float(entry["mask_downsample"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(path, f"no tumour mask entry for slide '{slide_id}' ({err})") from err
    mask = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise PipelineError(
            png, "tumour mask PNG is missing or unreadable", "Re-run wsi-mil synth."
        )
    return mask > 127, downsample


def patch_tumour_fraction(
    mask: np.ndarray, downsample: float, coords: np.ndarray, size0: int
) -> np.ndarray:
    """Fraction [N] of each level-0 patch (top-left ``coords``, side ``size0``) inside ``mask``."""
    coords = np.asarray(coords, np.int64).reshape(-1, 2)
    if len(coords) == 0:
        return np.zeros(0)
    xs, col = np.unique(coords[:, 0], return_inverse=True)
    ys, row = np.unique(coords[:, 1], return_inverse=True)
    grid = tissue_fraction(mask.astype(np.uint8), (downsample, downsample), xs, ys, size0)
    return grid[row, col]


def localisation_auc(scores: np.ndarray, tumour: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the boolean patch truth; None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    tumour = np.asarray(tumour, bool)
    if tumour.all() or not tumour.any():
        return None
    return float(roc_auc_score(tumour, np.asarray(scores, np.float64)))


def slide_localisation(
    scores: np.ndarray,
    coords: np.ndarray,
    size0: int,
    mask: np.ndarray,
    downsample: float,
    threshold: float = 0.5,
) -> dict[str, float | int | None]:
    """``{auc, n_patches, n_tumour}`` of one slide's score map against its tumour mask."""
    fraction = patch_tumour_fraction(mask, downsample, coords, size0)
    tumour = fraction >= threshold
    return {
        "auc": localisation_auc(scores, tumour),
        "n_patches": int(len(tumour)),
        "n_tumour": int(tumour.sum()),
    }


def summarise(aucs: list[float | None]) -> dict[str, float | int | None]:
    """Median, min and max of the defined AUCs, and how many slides had one."""
    vals = np.array([a for a in aucs if a is not None], float)
    if vals.size == 0:
        return {"n_slides": 0, "median": None, "min": None, "max": None}
    return {
        "n_slides": int(vals.size),
        "median": float(np.median(vals)),
        "min": float(vals.min()),
        "max": float(vals.max()),
    }


def store_localisation(
    store_path: str | os.PathLike,
    masks_json: str | os.PathLike,
    score: str | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """:func:`slide_localisation` of one score store against its slide's tumour mask, with its ids."""
    from pipeline.heatmaps.store import read_score_store

    store = read_score_store(store_path)
    name, values = store.score(score)
    mask, downsample = read_tumour_mask(masks_json, store.slide_id)
    result = slide_localisation(
        values, store.coords, store.patch_size_level0, mask, downsample, threshold
    )
    return {
        "slide_id": store.slide_id,
        "method": store.attrs.get("method"),
        "score": name,
        **result,
    }
