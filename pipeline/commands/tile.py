"""Find the tissue of one slide and write its patch coordinates (zarr) and a QC picture.

The store holds ``coords`` (int32 [N, 2], level-0 top-left x, y on one global grid from (0, 0)) and the
attributes the feature stage needs to read the same patches (slide MPP, target MPP, patch size, level-0
patch size, read level and size) plus the segmentation settings and the tissue area. Outputs are
published atomically: on failure nothing is left behind. With ``--record-failure`` (used by the workflow so
one bad slide does not block a cohort) a slide that cannot be read (:class:`SlideReadError`) yields an
empty store marked ``failed`` and a QC picture stating why, and the command exits 0; a configuration
error (e.g. ``tiling.overlap`` not below ``tiling.patch_size``) stops with its one line instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "segment tissue and write the patch grid of one slide (zarr) and a QC PNG"


def add_arguments(parser) -> None:
    parser.add_argument("slide", type=Path, help="slide file (.svs, .tif, .ndpi, .mrxs, .dcm, ...)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="tile store to write, e.g. S1.zarr"
    )
    parser.add_argument("--qc", type=Path, help="QC PNG to write (thumbnail, contours, patches)")
    parser.add_argument(
        "--mpp", type=float, help="µm/px of level 0; overrides the slide's metadata"
    )
    parser.add_argument("--config", type=Path, help="config YAML (default: built-in defaults)")
    parser.add_argument(
        "--reader",
        choices=["auto", "openslide", "tiffslide"],
        help="slide reader (default: slides.reader of the config)",
    )
    parser.add_argument(
        "--record-failure",
        action="store_true",
        help="on an unreadable slide, write an empty store marked failed (+ QC) and exit 0",
    )


def run(args) -> int:
    from pipeline.config import load_config, section
    from pipeline.errors import SlideReadError
    from pipeline.log import get_logger
    from pipeline.slides import open_slide, resolve_mpp
    from pipeline.tiling import publish_failure, run_tiling

    if args.config is not None:
        cfg = load_config(args.config)
        tiling, slides = cfg["tiling"], cfg["slides"]
    else:
        tiling, slides = section(None, "tiling"), section(None, "slides")
    reader = args.reader or slides["reader"]
    try:
        with open_slide(args.slide, reader) as slide:
            mpp, source = resolve_mpp(slide, override=args.mpp, default=slides["default_mpp"])
            run_tiling(slide, mpp, source, tiling, slides["mpp_tolerance"], args.output, args.qc)
    except SlideReadError as err:  # settings errors (ConfigError) stop the run, never recorded
        if not args.record_failure:
            raise
        print(err.line(), file=sys.stderr)
        publish_failure(args.slide, err, args.output, args.qc)
        get_logger("tile", args.slide.stem).warning(
            "recorded the failure in %s (failed: true); the other slides carry on", args.output
        )
    return 0
