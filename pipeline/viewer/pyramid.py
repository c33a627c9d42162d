"""A slide's Deep Zoom tile pyramid on disk, from openslide's ``DeepZoomGenerator``, bounded in detail.

The viewer opens pages straight from disk (``file://``), where a browser refuses to fetch a ``.dzi``
or JSON descriptor, so the pyramid's geometry is written as a script (``pyramid.js`` sets
``window.WSI_MIL_PYRAMID``) that the page loads with a ``<script>`` tag; tiles are plain JPEG/PNG
files, which load from disk like any image. Levels finer than ``max_um_per_px`` are not written (a
40x slide stops at 1 µm/px by default: 16 times fewer tiles than level 0), so the finest level written
is the pyramid's top and the page maps level-0 coordinates by ``scale`` (its width / level-0 width).

Layout of the output folder: ``tiles/{level}/{col}_{row}.{format}`` (Deep Zoom levels 0..top, level
0 a single pixel), ``pyramid.js`` and ``pyramid.json`` (the same geometry plus provenance: slide
path, size, µm/px, settings, tile count, bytes, seconds), written last.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, PipelineError
from pipeline.log import get_logger
from pipeline.slides import open_slide
from pipeline.store import atomic_path

PYRAMID_JS = "pyramid.js"
PYRAMID_JSON = "pyramid.json"
TILES = "tiles"


@dataclass(frozen=True)
class PyramidOptions:
    """The ``viewer`` config keys that shape a pyramid."""

    max_um_per_px: float = 1.0  # finest level written (µm/px); 0 writes every level down to level 0
    tile_size: int = 254  # Deep Zoom's default: with overlap 1 the tiles are 256 px
    overlap: int = 1
    format: str = "jpeg"
    quality: int = 80

    @classmethod
    def from_config(cls, viewer: dict[str, Any]) -> PyramidOptions:
        return cls(**{k: viewer[k] for k in cls.__dataclass_fields__ if k in viewer})

    def __post_init__(self) -> None:
        if self.format not in ("jpeg", "png"):
            raise ConfigError("config", f"viewer.format must be jpeg or png, got {self.format!r}")


#: A pyramid level counts as downsample d when its own is within this factor of d (see _Levels).
LEVEL_TOLERANCE = 1.01


class _Levels:
    """A slide handle as ``DeepZoomGenerator`` sees it, picking pyramid levels with a tolerance.

    OpenSlide gives a level's downsample as the mean of width and height ratios, so a level of a
    5380 x 3751 slide stored at 1345 x 937 is 4.0016, and asked for the best level for 4 it answers
    level 0: every tile of that Deep Zoom level would be read at 16 times the pixels and shrunk
    (measured on a demo slide: 4x slower tiles at those levels, 1.3x the whole pyramid). Here a level within 1 % of the asked downsample counts, and the
    generator's own arithmetic reads the (0.04 % larger) region and fits it to the tile.
    """

    def __init__(self, handle) -> None:
        self._handle = handle

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        ok = [
            (d, i)
            for i, d in enumerate(self._handle.level_downsamples)
            if d <= downsample * LEVEL_TOLERANCE
        ]
        return max(ok)[1] if ok else 0


def top_level(level_count: int, slide_mpp: float, max_um_per_px: float) -> int:
    """The finest Deep Zoom level whose pixels are at least ``max_um_per_px`` wide.

    Level ``level_count - 1`` is level 0 of the slide; each level below halves the resolution. A slide
    coarser than the bound keeps its full resolution.
    """
    full = level_count - 1
    if max_um_per_px <= 0 or slide_mpp >= max_um_per_px * 0.999:
        return full
    halvings = math.ceil(math.log2(max_um_per_px / slide_mpp) - 1e-9)
    return max(0, full - halvings)


def write_pyramid(
    slide_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    slide_mpp: float,
    slide_id: str,
    options: PyramidOptions,
    threads: int = 1,
    reader: str = "auto",
    expect_size: tuple[int, int] | list[int] | None = None,
) -> dict[str, Any]:
    """Write the pyramid of one slide into ``out`` (atomically: the folder appears complete or not
    at all) and return its geometry; ``expect_size`` (the tile store's) refuses a changed slide."""
    from openslide.deepzoom import DeepZoomGenerator

    log = get_logger("viewer-tiles", slide_id)
    t0 = time.perf_counter()
    with open_slide(slide_path, reader) as slide:
        if expect_size is not None and tuple(expect_size) != tuple(slide.dimensions):
            raise PipelineError(
                slide_path,
                f"slide is {list(slide.dimensions)} px, its tile store recorded {list(expect_size)}",
                "The slide changed since tiling; re-run `wsi-mil tile`.",
            )
        # OpenSlide and tiffslide handles speak the API DeepZoomGenerator uses
        dz = DeepZoomGenerator(
            _Levels(slide.handle),
            tile_size=options.tile_size,
            overlap=options.overlap,
            limit_bounds=False,
        )
        top = top_level(dz.level_count, slide_mpp, options.max_um_per_px)
        jobs = [
            (level, col, row)
            for level in range(top + 1)
            for col in range(dz.level_tiles[level][0])
            for row in range(dz.level_tiles[level][1])
        ]
        width, height = dz.level_dimensions[top]
        width0, height0 = dz.level_dimensions[-1]
        log.info(
            "%d tiles on %d levels, finest %d x %d px (%.2f µm/px; level 0 is %d x %d)",
            len(jobs),
            top + 1,
            width,
            height,
            slide_mpp * width0 / width,
            width0,
            height0,
        )
        with atomic_path(out) as tmp:
            for level in range(top + 1):
                (tmp / TILES / str(level)).mkdir(parents=True)
            ext = "jpg" if options.format == "jpeg" else "png"
            save = {"quality": options.quality} if options.format == "jpeg" else {}

            def write(job: tuple[int, int, int]) -> int:
                level, col, row = job
                path = tmp / TILES / str(level) / f"{col}_{row}.{ext}"
                dz.get_tile(level, (col, row)).save(path, options.format.upper(), **save)
                return path.stat().st_size

            with ThreadPoolExecutor(max(1, threads)) as pool:
                sizes = list(pool.map(write, jobs))
            geometry = {
                "slide_id": slide_id,
                "width": width,
                "height": height,
                "level0_width": width0,
                "level0_height": height0,
                "scale": width / width0,
                "mpp": slide_mpp * width0 / width,
                "top_level": top,
                "tile_size": options.tile_size,
                "overlap": options.overlap,
                "format": ext,
                "tiles": TILES,
            }
            (tmp / PYRAMID_JS).write_text(
                "window.WSI_MIL_PYRAMID = " + json.dumps(geometry) + ";\n"
            )
            record = {
                **geometry,
                "slide": str(Path(slide_path).resolve()),
                "slide_mpp": slide_mpp,
                "options": asdict(options),
                "n_tiles": len(jobs),
                "bytes": sum(sizes),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            (tmp / PYRAMID_JSON).write_text(json.dumps(record, indent=1) + "\n")
    log.info("wrote %s: %.1f MB in %.1f s", out, record["bytes"] / 1e6, record["seconds"])
    return record
