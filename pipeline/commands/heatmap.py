"""Render one slide's heatmap (and optionally its top-patch gallery) from a score store and the slide.

The score store (``{slide}.zarr``: ``coords`` and one array per score, written by the scoring step)
records the slide path and the tile geometry, so ``wsi-mil heatmap S1.zarr -o S1.png`` is enough; pass
``--slide`` when the slide has moved. By default the whole slide is drawn with its long side at most 2048
px; ``--region x,y,w,h`` (level-0 px) with ``--mpp`` or ``--level`` draws a part at high resolution.
"""

from __future__ import annotations

from pathlib import Path

HELP = "draw a slide's heatmap (and top-patch gallery) from a score store"


def _region(text: str) -> tuple[int, int, int, int]:
    import argparse

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h in level-0 pixels, got {text!r}")
    return values  # type: ignore[return-value]


def add_arguments(parser) -> None:
    parser.add_argument("scores", type=Path, help="score store {slide}.zarr")
    parser.add_argument("-o", "--output", type=Path, required=True, help="heatmap PNG to write")
    parser.add_argument(
        "--slide", type=Path, help="slide file (default: the path the store records)"
    )
    parser.add_argument("--score", help="score to draw (default: attention, else the first)")
    parser.add_argument(
        "--normalise",
        choices=["percentile", "raw"],
        default="percentile",
        help="default percentile",
    )
    parser.add_argument("--vmin", type=float, help="raw: score at the bottom of the colour map")
    parser.add_argument("--vmax", type=float, help="raw: score at the top of the colour map")
    parser.add_argument("--alpha", type=float, default=0.5, help="colour opacity (default 0.5)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map (default jet)")
    parser.add_argument(
        "--max-side", type=int, default=2048, help="long side of the map (default 2048)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--mpp", type=float, help="output um/px (e.g. 2 for a region close-up)")
    group.add_argument("--level", type=int, help="draw at the um/px of this pyramid level")
    parser.add_argument(
        "--region", type=_region, help="x,y,w,h in level-0 px (default: whole slide)"
    )
    parser.add_argument("--no-contours", action="store_true", help="do not draw tissue outlines")
    parser.add_argument(
        "--gallery", type=Path, help="also write the top/bottom patch gallery PNG (+ .csv)"
    )
    parser.add_argument("-k", type=int, default=8, help="patches per gallery row (default 8)")
    parser.add_argument(
        "--reader", choices=["auto", "openslide", "tiffslide"], default="auto", help="slide reader"
    )


def run(args) -> int:
    from pipeline.heatmaps.outputs import draw_slide
    from pipeline.heatmaps.render import RenderOptions
    from pipeline.log import get_logger

    options = RenderOptions(
        score=args.score,
        normalise=args.normalise,
        vmin=args.vmin,
        vmax=args.vmax,
        alpha=args.alpha,
        cmap=args.cmap,
        max_side=args.max_side,
        mpp=args.mpp,
        level=args.level,
        region=args.region,
        contours=not args.no_contours,
    )
    draw_slide(
        args.scores,
        args.output,
        args.gallery,
        slide_path=args.slide,
        options=options,
        k=args.k,
        reader=args.reader,
    )
    log = get_logger("heatmap", args.scores.stem)
    log.info("wrote %s%s", args.output, f", {args.gallery} and its .csv" if args.gallery else "")
    return 0
