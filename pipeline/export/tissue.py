"""The tissue of a slide as level-0 polygons with holes, re-derived from what its tile store recorded.

The tile store keeps the segmentation settings and the mask's size, not the contours, so the slide is
segmented again with exactly those settings (:mod:`pipeline.tissue`); a mask of another size means the
slide or the code changed since tiling, and we refuse rather than export contours that do not belong
to the patches. The polygons trace the final mask (tissue minus holes minus artefacts) through its
pixel centres, scaled to level-0 pixels, and are made valid with shapely (a contour that touches
itself at a pixel corner becomes two polygons, not a bow tie).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.errors import PipelineError
from pipeline.slides import open_slide
from pipeline.tilestore import Tiles, check_tiles_match
from pipeline.tissue import Tissue, TissueParams, read_for_segmentation, segment_rgb


def params_of(tiles: Tiles) -> TissueParams:
    """The segmentation settings the tile store was made with."""
    seg = tiles.attrs.get("segmentation") or {}
    fields = TissueParams.__dataclass_fields__
    missing = [k for k in fields if k not in seg]
    if missing:
        raise PipelineError(
            tiles.path,
            f"tile store lacks the segmentation settings ({', '.join(missing)})",
            "Re-run `wsi-mil tile` for this slide.",
        )
    values = {k: seg[k] for k in fields}
    values["pen_colors"] = tuple(values["pen_colors"])
    return TissueParams(**values)


def segment_again(tiles: Tiles) -> Tissue:
    """The tissue mask of the tile store's slide, segmented with its recorded settings."""
    if tiles.failed:
        raise PipelineError(tiles.path, "tile store is marked failed; it has no tissue")
    with open_slide(tiles.attrs["slide"], tiles.reader) as slide:
        check_tiles_match(slide, tiles)
        slide_mpp, params = float(tiles.attrs["slide_mpp"]), params_of(tiles)
        rgb, scale = read_for_segmentation(slide, slide_mpp, params)
        tissue = segment_rgb(rgb, scale, slide_mpp, params)
    recorded = tiles.attrs["segmentation"].get("mask_size")
    got = [int(tissue.mask.shape[1]), int(tissue.mask.shape[0])]
    if recorded is not None and list(recorded) != got:
        raise PipelineError(
            tiles.path,
            f"segmenting the slide again gives a {got} mask, the tile store recorded {recorded}",
            "The slide or the segmentation changed since tiling; re-run `wsi-mil tile`.",
        )
    return tissue


def tissue_polygons(tissue: Tissue):
    """Shapely polygons (level-0 px) of the tissue mask, with holes; a list, largest first."""
    import shapely
    from shapely.geometry import Polygon

    contours, hierarchy = cv2.findContours(
        tissue.mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return []
    sx, sy = tissue.scale

    def ring(contour: np.ndarray) -> np.ndarray:
        xy = contour.reshape(-1, 2).astype(np.float64) + 0.5  # pixel centres
        return xy * (sx, sy)

    parent = hierarchy[0][:, 3]
    out = []
    for i in np.flatnonzero(parent < 0):
        if len(contours[i]) < 3:
            continue
        holes = [ring(contours[k]) for k in np.flatnonzero(parent == i) if len(contours[k]) >= 3]
        poly = shapely.make_valid(Polygon(ring(contours[i]), holes))
        out.extend(_polygons(poly))
    return sorted((p for p in out if p.area > 0), key=lambda p: -p.area)


def _polygons(geometry) -> list:
    """The polygons inside a geometry that make_valid returned (drops its lines and points)."""
    if geometry.geom_type == "Polygon":
        return [geometry]
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []
