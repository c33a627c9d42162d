"""Read a synthetic cohort's ground-truth masks and measure them per patch.

A cohort folder holds ``masks/masks.json`` and one PNG per slide and kind (``tissue``, ``tumor`` and, when
the cohort has them, ``decoy`` and ``ink``): 8-bit, 255 inside, at ``mask_downsample`` level-0 pixels per
mask pixel (mask pixel ``(i, j)`` covers level-0 ``x in [j*d, (j+1)*d)``, ``y in [i*d, (i+1)*d)``). The
per-patch fraction uses the tiling stage's exact area integral, so a patch that is not a whole number
of mask pixels is still measured exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import PipelineError


def read_mask(cohort_dir: str | os.PathLike, slide_id: str, kind: str = "tumor"):
    """``(mask, downsample)``: the boolean mask of ``kind`` for one slide and its level-0 px per pixel."""
    root = Path(cohort_dir)
    index = root / "masks" / "masks.json"
    try:
        entry = json.loads(index.read_text())["slides"][slide_id]
    except (OSError, ValueError, KeyError) as err:
        raise PipelineError(
            index, f"no ground-truth masks for slide {slide_id!r} ({err})",
            "Point to the folder that `wsi-mil synth` wrote (it holds masks/masks.json).",
        ) from err  # fmt: skip
    key = f"{kind}_mask"
    if key not in entry:
        raise PipelineError(
            index, f"slide {slide_id!r} has no {kind} mask (it has: {', '.join(sorted(entry))})",
            "Decoy masks exist only in cohorts written with --decoys, ink masks with --ink/--border.",
        )  # fmt: skip
    image = cv2.imread(str(root / entry[key]), cv2.IMREAD_GRAYSCALE)
    if image is None or list(image.shape) != list(entry["mask_shape"]):
        raise PipelineError(
            root / entry[key],
            "mask is missing or not the size masks.json says",
            "Re-create the cohort with `wsi-mil synth ... --overwrite`.",
        )
    return image > 0, int(entry["mask_downsample"])


def patch_fraction(mask: np.ndarray, downsample: int, coords: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each level-0 patch ``[x, x+size) × [y, y+size)`` (``coords`` [N, 2] as (x, y), as in
    a tile store) covered by ``mask``; float64 [N]."""
    from pipeline.tiling import tissue_fraction

    coords = np.asarray(coords).reshape(-1, 2)
    if not len(coords):
        return np.zeros(0)
    xs, xi = np.unique(coords[:, 0], return_inverse=True)
    ys, yi = np.unique(coords[:, 1], return_inverse=True)
    grid = tissue_fraction(mask.astype(np.uint8), (downsample, downsample), xs, ys, size)
    return grid[yi, xi]
