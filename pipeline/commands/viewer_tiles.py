"""Write the Deep Zoom tile pyramid of one slide for the report's viewer.

Tiles come from openslide's ``DeepZoomGenerator``; levels finer than ``viewer.max_um_per_px`` are not
written, which bounds the disk a slide takes (see BENCHMARKS.md). The slide and its µm/px are the
ones its tile store recorded. A failed tile store gives a folder with only ``pyramid.json`` saying
why, so the cohort's pages still build. See :mod:`pipeline.viewer.pyramid`.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write the deep-zoom tile pyramid of one slide for the report's viewer"


def add_arguments(parser) -> None:
    parser.add_argument("tiles", type=Path, help="the slide's tile store ({slide}.zarr)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="pyramid folder")
    parser.add_argument("--config", type=Path, help="config YAML (default: built-in defaults)")
    parser.add_argument("--threads", type=int, default=1, help="tiles encoded in parallel")


def run(args) -> int:
    from pipeline.config import section
    from pipeline.store import atomic_path, write_json
    from pipeline.tilestore import read_tiles
    from pipeline.viewer.pyramid import PYRAMID_JSON, PyramidOptions, write_pyramid

    tiles = read_tiles(args.tiles)
    slide = args.tiles.name.removesuffix(".zarr")
    if tiles.failed:
        with atomic_path(args.output) as tmp:
            tmp.mkdir(parents=True)
            write_json(
                tmp / PYRAMID_JSON,
                {"slide_id": slide, "failed": True, "error": tiles.attrs.get("error")},
            )
        return 0
    options = PyramidOptions.from_config(section(args.config, "viewer"))
    write_pyramid(
        tiles.attrs["slide"],
        args.output,
        slide_mpp=float(tiles.attrs["slide_mpp"]),
        slide_id=slide,
        options=options,
        threads=args.threads,
        reader=tiles.reader,
        expect_size=tiles.attrs.get("slide_size"),
    )
    return 0
