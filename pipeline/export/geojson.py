"""One slide as a GeoJSON FeatureCollection that QuPath imports as-is (File › Import objects).

Coordinates are level-0 pixels, y down, as QuPath's image space. Three kinds of object:

* tissue: one ``annotation`` per tissue piece (a Polygon with its holes), classification ``Tissue``;
* the kept patches: one ``tile`` per patch (the tile store's square, in its order), with
  ``measurements`` = every score map's value for that patch, named ``{encoder}/{method}: {score}``;
* the top-k patches of each method's main score: ``annotation`` objects named by rank and score,
  classification ``Top patch``, so they are listed and can be stepped through in QuPath.

Scores come from the score stores of the heatmaps stage; a store whose coordinates differ from the
tile store's is refused (it was scored on other patches).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.store import atomic_path
from pipeline.tilestore import Tiles

TISSUE_CLASS = {"name": "Tissue", "color": [0, 160, 0]}
TOP_CLASS = {"name": "Top patch", "color": [255, 0, 0]}


@dataclass
class ScoreMap:
    """One method's scores on a slide: ``{name: values}`` in the tile store's order."""

    label: str  # "{encoder}/{method}"
    scores: dict[str, np.ndarray]
    main: str  # the score the top-k list follows


def score_maps(tiles: Tiles, stores: Sequence[tuple[str, Any]]) -> list[ScoreMap]:
    """``(label, ScoreStore)`` pairs as score maps, refusing any scored on other patches."""
    out = []
    for label, store in stores:
        if store.coords.shape != tiles.coords.shape or not np.array_equal(
            store.coords, tiles.coords
        ):
            raise PipelineError(
                store.attrs.get("path", label),
                f"score store's {len(store.coords)} coordinates differ from the tile store's "
                f"{len(tiles.coords)} ({tiles.path})",
                "Re-run the heatmaps for this slide's current tile store.",
            )
        main, _ = store.score()
        out.append(ScoreMap(label, dict(store.scores), main))
    return out


def _square(x: int, y: int, side: int) -> dict[str, Any]:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    return {"type": "Polygon", "coordinates": [ring]}


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in values.tolist()]


def feature_collection(
    tiles: Tiles, polygons: list, maps: Sequence[ScoreMap], k: int = 8
) -> dict[str, Any]:
    """The FeatureCollection of one slide (see the module docstring)."""
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    side = int(tiles.attrs["level0_patch_size"])
    features: list[dict[str, Any]] = []
    for i, poly in enumerate(polygons):
        geometry = mapping(orient(poly, sign=1.0))
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": "annotation",
                    "name": f"tissue {i + 1}",
                    "classification": TISSUE_CLASS,
                },
            }
        )
    columns = {
        f"{m.label}: {name}": _round(np.asarray(values, np.float64))
        for m in maps
        for name, values in m.scores.items()
    }
    for i, (x, y) in enumerate(tiles.coords.tolist()):
        features.append(
            {
                "type": "Feature",
                "geometry": _square(x, y, side),
                "properties": {
                    "objectType": "tile",
                    "name": f"patch {i}",
                    "measurements": {name: col[i] for name, col in columns.items()},
                },
            }
        )
    for m in maps:
        values = np.asarray(m.scores[m.main], np.float64)
        for rank, i in enumerate(np.argsort(-values, kind="stable")[:k], start=1):
            x, y = (int(v) for v in tiles.coords[i])
            features.append(
                {
                    "type": "Feature",
                    "geometry": _square(x, y, side),
                    "properties": {
                        "objectType": "annotation",
                        "name": f"{m.label} top {rank} ({m.main} {values[i]:.4g})",
                        "classification": TOP_CLASS,
                        "measurements": {f"{m.label}: {m.main}": float(values[i])},
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike, collection: dict[str, Any]) -> Path:
    """Publish the collection atomically (compact JSON: a 50 000-patch slide is tens of MB)."""
    final = Path(path)
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(collection, separators=(",", ":")))
    return final


def tissue_rings(collection: dict[str, Any]) -> list[list[list[list[float]]]]:
    """The tissue polygons' rings (exterior first, then holes) of a collection this module wrote."""
    return [
        f["geometry"]["coordinates"]
        for f in collection["features"]
        if f["properties"].get("classification", {}).get("name") == TISSUE_CLASS["name"]
    ]
