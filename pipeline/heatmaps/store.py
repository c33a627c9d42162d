"""Score stores: one zarr group per slide and method with the patch coordinates and named score arrays.

Layout of ``{slide}.zarr`` (zarr v3, written atomically by :func:`pipeline.store.write_store`):

* ``coords``: int32 [N, 2], level-0 top-left (x, y) of each patch, the tile store's coordinates in the
  tile store's order;
* one float32 [N] array per score name (``attention``, ``instance_prob``, ...; see
  :mod:`pipeline.mil.scores`);
* attrs: ``kind`` (``"scores"``), ``slide_id``, ``method``, ``scores`` (the names), ``n_patches``,
  ``label`` and ``prediction`` (null when unknown), ``provenance`` (free mapping: fold, model
  checkpoint, features store, ...), and the tile store's geometry copied under ``tiles`` (slide path,
  slide size, slide/target MPP, patch size, level-0 patch size, read level/size, segmentation), so a
  picture can be drawn from the score store and the slide alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import pipeline
from pipeline.errors import PipelineError
from pipeline.store import open_store, write_store

#: Tile-store attrs a heatmap needs (copied into the score store under ``tiles``).
TILE_KEYS = (
    "slide",
    "slide_size",
    "slide_mpp",
    "target_mpp",
    "patch_size",
    "level0_patch_size",
    "read_level",
    "read_size",
    "segmentation",
    "reader",
)


@dataclass
class ScoreStore:
    """A score store in memory: coordinates, the score arrays and the attrs."""

    coords: np.ndarray  # int32 [N, 2]
    scores: dict[str, np.ndarray]  # name -> float32 [N]
    attrs: dict[str, Any]

    @property
    def slide_id(self) -> str:
        return str(self.attrs["slide_id"])

    @property
    def tiles(self) -> dict[str, Any]:
        return dict(self.attrs.get("tiles") or {})

    @property
    def patch_size_level0(self) -> int:
        return int(self.tiles["level0_patch_size"])

    def score(self, name: str | None = None) -> tuple[str, np.ndarray]:
        """``(name, values)``; without a name, ``attention`` when present, else the first score."""
        if name is None:
            name = "attention" if "attention" in self.scores else next(iter(self.scores))
        if name not in self.scores:
            raise PipelineError(
                self.attrs.get("path", self.slide_id),
                f"score store has no score '{name}'",
                f"Available: {', '.join(self.scores)}.",
            )
        return name, self.scores[name]


def write_score_store(
    path: str | os.PathLike,
    coords: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    slide_id: str,
    method: str,
    tile_attrs: Mapping[str, Any],
    label: Any = None,
    prediction: Any = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and publish one slide's score store (see module docstring for the layout)."""
    where = f"score store {path}"
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.issubdtype(coords.dtype, np.integer):
        raise PipelineError(
            where, f"coords must be integer [N, 2], got {coords.dtype} {coords.shape}"
        )
    n = coords.shape[0]
    if not scores:
        raise PipelineError(where, "no score to write")
    arrays: dict[str, np.ndarray] = {"coords": coords.astype(np.int32)}
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if name == "coords" or not name.replace("_", "").isalnum():
            raise PipelineError(where, f"invalid score name {name!r}")
        if values.shape != (n,) or not np.isfinite(values).all():
            raise PipelineError(
                where,
                f"score '{name}' must be {n} finite values (one per patch), got {values.shape}",
                "Score the same bag the tile store's coordinates belong to.",
            )
        arrays[name] = values
    missing = [k for k in ("level0_patch_size", "slide_mpp") if k not in tile_attrs]
    if missing:
        raise PipelineError(
            where, f"tile attrs lack {', '.join(missing)}", "Pass the tile store's attrs."
        )
    if "n_patches" in tile_attrs and int(tile_attrs["n_patches"]) != n:
        raise PipelineError(
            where, f"{n} coordinates but the tile store has {tile_attrs['n_patches']} patches"
        )
    attrs = {
        "kind": "scores",
        "slide_id": slide_id,
        "method": method,
        "scores": list(scores),
        "n_patches": n,
        "label": label,
        "prediction": prediction,
        "provenance": dict(provenance or {}),
        "tiles": {k: tile_attrs[k] for k in TILE_KEYS if k in tile_attrs},
        "version": pipeline.__version__,
    }
    return write_store(path, arrays, attrs)


def read_score_store(path: str | os.PathLike) -> ScoreStore:
    """Read a whole score store (coords and every score: a few MB even for 100 000 patches)."""
    group = open_store(path)
    attrs = dict(group.attrs)
    if attrs.get("kind") != "scores" or "coords" not in group:
        raise PipelineError(path, "not a score store", "Write it with write_score_store.")
    coords = np.asarray(group["coords"][...])
    scores = {name: np.asarray(group[name][...]) for name in attrs["scores"]}
    attrs["path"] = str(path)
    return ScoreStore(coords, scores, attrs)
