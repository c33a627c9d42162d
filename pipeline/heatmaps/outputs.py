"""The two calls a workflow step makes per slide: score it into a store, then draw its pictures.

``score_slide`` takes the model that must score the slide (for out-of-fold heatmaps: the fold model whose
TEST part held it; choosing it is the caller's job), the slide's bag and the tile store's coordinates
and attrs, and writes the score store. ``draw_slide`` writes ``{slide}.png``, ``{slide}_gallery.png`` and
``{slide}_gallery.csv`` from that store and the slide.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.heatmaps.render import RenderOptions


def default_prediction(logits: np.ndarray) -> float | list[float]:
    """Sigmoid probability of one output, else the softmax probabilities (callers may pass their own)."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    if logits.size == 1:
        return float(1.0 / (1.0 + np.exp(-logits[0])))
    e = np.exp(logits - logits.max())
    return [float(v) for v in e / e.sum()]


def score_slide(
    path: str | os.PathLike,
    model,
    bag,
    coords: np.ndarray,
    tile_attrs: Mapping[str, Any],
    *,
    slide_id: str,
    method: str,
    label: Any = None,
    prediction: Any = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Score ``bag`` (``[N, D]``, rows in the order of ``coords``) with ``model`` and publish the store.

    ``prediction`` defaults to :func:`default_prediction` of the model's logits on this bag; a callable
    is applied to the logits (e.g. a survival task's risk), so the bag is scored once. The logits are
    kept in the provenance either way.
    """
    from pipeline.heatmaps.store import write_score_store
    from pipeline.mil.results import score_bag

    maps, logits = score_bag(model, bag)
    return write_score_store(
        path,
        coords,
        maps,
        slide_id=slide_id,
        method=method,
        tile_attrs=tile_attrs,
        label=label,
        prediction=(prediction or default_prediction)(logits)
        if prediction is None or callable(prediction)
        else prediction,
        provenance={**dict(provenance or {}), "logits": logits.tolist()},
    )


def draw_slide(
    store_path: str | os.PathLike,
    png: str | os.PathLike,
    gallery_png: str | os.PathLike | None = None,
    *,
    slide_path: str | os.PathLike | None = None,
    options: RenderOptions | None = None,
    k: int = 8,
    reader: str = "auto",
) -> None:
    """Heatmap PNG (+ gallery PNG and its CSV beside it) of one score store; the slide path defaults to
    the one the store records."""
    from pipeline.errors import PipelineError
    from pipeline.heatmaps.gallery import make_gallery, write_gallery
    from pipeline.heatmaps.render import render_heatmap, write_png
    from pipeline.heatmaps.store import read_score_store
    from pipeline.slides import open_slide

    options = options or RenderOptions()
    store = read_score_store(store_path)
    slide_path = slide_path or store.tiles.get("slide")
    if not slide_path:
        raise PipelineError(store_path, "the store records no slide path", "Pass the slide.")
    with open_slide(slide_path, reader) as slide:
        picture = render_heatmap(slide, store, options)
        gallery = make_gallery(slide, store, options.score, k) if gallery_png else None
    write_png(png, picture.rgb)
    if gallery is not None:
        write_gallery(gallery, gallery_png, Path(gallery_png).with_suffix(".csv"))
