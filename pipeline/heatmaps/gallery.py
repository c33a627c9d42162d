"""Top-patch gallery: the k highest- and k lowest-scoring patches of a slide, read as the model saw them.

Patches are read with the tile store's geometry (:func:`pipeline.slides.read_patch`: same level, read size
and resize as feature extraction), so the gallery shows exactly the pixels that were embedded. One PNG
(top row: highest first; bottom row: lowest first; score and level-0 coordinates under each patch) and a
CSV listing the same patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.heatmaps.store import ScoreStore
from pipeline.slides import PatchGeometry, Slide, read_patch
from pipeline.store import atomic_path

LABEL_H = 34  # white band under each patch for its score and coordinates
GAP = 6


@dataclass
class Gallery:
    """The picture, the listed patches and where each patch's pixels sit in the picture."""

    rgb: np.ndarray
    table: pd.DataFrame  # kind (top|bottom), rank, index, x, y, score
    boxes: list[tuple[int, int, int]]  # (top, left, side) of each table row's patch in ``rgb``


def extreme_patches(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest (descending) and ``k`` lowest (ascending) scores; ties by index."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    k = min(int(k), len(order))
    top = order[:k]
    low = np.argsort(np.asarray(scores, np.float64), kind="stable")[:k]
    return top, low


def geometry_of(store: ScoreStore) -> PatchGeometry:
    """The patch geometry the tile store recorded."""
    t = store.tiles
    try:
        return PatchGeometry(
            float(t["slide_mpp"]),
            float(t["target_mpp"]),
            int(t["patch_size"]),
            int(t["level0_patch_size"]),
            int(t["read_level"]),
            int(t["read_size"]),
        )
    except KeyError as err:
        raise PipelineError(
            store.attrs.get("path", store.slide_id), f"score store lacks the tile geometry ({err})"
        ) from err


def make_gallery(
    slide: Slide,
    store: ScoreStore,
    score: str | None = None,
    k: int = 8,
    tile_px: int | None = None,
) -> Gallery:
    """Read the extreme patches and lay them out (``tile_px``: displayed side, default the patch size)."""
    if k < 1:
        raise PipelineError("gallery", f"k must be >= 1, got {k}")
    name, values = store.score(score)
    geometry = geometry_of(store)
    side = int(tile_px or geometry.patch_size)
    top, low = extreme_patches(values, k)
    cols = max(len(top), 1)
    row_h = side + LABEL_H + GAP
    header = 26
    canvas = np.full((header + 2 * row_h, GAP + cols * (side + GAP), 3), 255, np.uint8)
    _text(
        canvas,
        f"{store.slide_id}  {store.attrs.get('method')}  {name}: top {len(top)} / bottom "
        f"{len(low)} of {len(values)}",
        6,
        18,
        0.5,
    )
    rows, boxes = [], []
    for r, (kind, idx) in enumerate((("top", top), ("bottom", low))):
        for rank, i in enumerate(idx):
            x, y = (int(v) for v in store.coords[i])
            patch = read_patch(slide, x, y, geometry)
            if side != patch.shape[0]:
                patch = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
            t, left = header + r * row_h, GAP + rank * (side + GAP)
            canvas[t : t + side, left : left + side] = patch
            _text(canvas, f"{values[i]:.4g}", left, t + side + 14, 0.4)
            _text(canvas, f"({x}, {y})", left, t + side + 28, 0.4)
            boxes.append((t, left, side))
            rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "index": int(i),
                    "x": x,
                    "y": y,
                    "score": float(values[i]),
                }
            )
    return Gallery(canvas, pd.DataFrame(rows), boxes)


def write_gallery(gallery: Gallery, png: str | os.PathLike, csv: str | os.PathLike) -> None:
    """Publish the gallery PNG and its CSV (each atomically)."""
    from pipeline.heatmaps.render import write_png

    with atomic_path(csv) as tmp:
        gallery.table.to_csv(tmp, index=False)
    write_png(png, gallery.rgb)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
