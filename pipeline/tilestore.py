"""Reading a tile store back: the coordinates and patch geometry that `wsi-mil tile` published.

The writing side is :func:`pipeline.tiling.publish`; this module is what later stages (features)
use to read it, and to refuse a store that was cut from another slide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.slides import PatchGeometry
from pipeline.store import open_store


@dataclass
class Tiles:
    """A tile store: coordinates in order, the geometry they were cut with and all its attrs."""

    path: Path
    coords: np.ndarray  # int32 [N, 2], level-0 top-left (x, y)
    attrs: dict[str, Any]

    @property
    def failed(self) -> bool:
        return bool(self.attrs.get("failed"))

    @property
    def reader(self) -> str:
        return self.attrs.get("reader", "auto")

    def geometry(self) -> PatchGeometry:
        return PatchGeometry.from_attrs(self.attrs, self.path)


def read_tiles(path: str | os.PathLike) -> Tiles:
    """The tile store at ``path`` (coordinates read whole: 8 bytes a patch)."""
    group = open_store(path)
    attrs = dict(group.attrs)
    if "coords" not in group:
        raise PipelineError(path, "tile store has no 'coords' array", "Re-run `wsi-mil tile`.")
    coords = np.asarray(group["coords"][...], dtype=np.int32).reshape(-1, 2)
    return Tiles(Path(path), coords, attrs)


def check_tiles_match(slide, tiles: Tiles) -> None:
    """Refuse a tile store cut from another slide (different size, or patches off the slide)."""
    size = tiles.attrs.get("slide_size")
    if size is not None and tuple(map(int, size)) != tuple(slide.dimensions):
        raise PipelineError(
            tiles.path,
            f"tile store was made from a slide of size {list(size)}, but {slide.path} is "
            f"{list(slide.dimensions)}",
            "Pass the tile store of this slide, or re-run `wsi-mil tile`.",
        )
    width, height = slide.dimensions
    x, y = tiles.coords[:, 0], tiles.coords[:, 1]
    if len(x) and (x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height):
        raise PipelineError(
            tiles.path,
            f"patch coordinates fall outside {slide.path} ({width}×{height})",
            "Pass the tile store of this slide, or re-run `wsi-mil tile`.",
        )
    level = tiles.geometry().read_level
    if level >= slide.level_count:
        raise PipelineError(
            tiles.path,
            f"tile store reads level {level}, {slide.path} has {slide.level_count}",
            "Re-run `wsi-mil tile` for this slide.",
        )
