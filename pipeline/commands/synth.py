"""Write a synthetic cohort of pyramidal Aperio-style slides with known tissue and tumour.

OUTDIR receives slides/*.svs (40x and 20x, tiled JPEG, 4x pyramid), labels.csv (slide_id,case_id,label),
survival.csv (case_id,time,event), masks/{slide}_tissue.png and masks/{slide}_tumor.png (ground truth at
--mask-mpp um/px, see masks/masks.json), and cohort.json (per-slide size, MPP, magnification, tumour
fraction, label, case; written last). Same arguments give byte-identical files, and a complete cohort
made with the same arguments is reused (--overwrite rewrites it).

Harder cohorts, each option off by default (off, the files are exactly those of a cohort without it):
--decoys F puts F of every slide's tissue (both classes) in dark, tumour-like regions that are not
tumour (lymphoid-aggregate-like: packed small round nuclei), with masks/{slide}_decoy.png; --ink COLOUR...
draws pen strokes (one on the glass, one across the tissue outline per colour) and --border a near-black
band along the left edge, with masks/{slide}_ink.png. The tumour mask never includes decoys.

--prefix P starts every slide and case id with P (ext_case000_a.svs, labels, survival, masks), so a
second cohort, e.g. an external test set, does not clash with the first; the pixels are those of the
same seed without a prefix.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write a synthetic demo cohort (slides, labels, survival, ground-truth masks)"


def add_arguments(parser) -> None:
    parser.add_argument("outdir", type=Path, help="output folder (created)")
    parser.add_argument("--slides", type=int, default=24, help="number of slides (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size-scale",
        type=float,
        default=1.0,
        help="scale both slide sides (default 1: ~2.3x1.65 mm)",
    )
    parser.add_argument(
        "--tumor-fraction",
        type=float,
        nargs=2,
        default=(0.02, 0.10),
        metavar=("LOW", "HIGH"),
        help="tumour area / tissue area of positive slides, drawn uniformly (default 0.02 0.10)",
    )
    parser.add_argument(
        "--censored", type=float, default=0.3, help="fraction of censored cases (default 0.3)"
    )
    parser.add_argument(
        "--two-slide-fraction",
        type=float,
        default=0.25,
        help="fraction of cases with two slides (default 0.25)",
    )
    parser.add_argument(
        "--mask-mpp",
        type=float,
        default=8.0,
        help="ground-truth mask resolution, um/px (default 8)",
    )
    parser.add_argument(
        "--decoys",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of each slide's tissue in dark tumour-like decoys, both classes (default 0)",
    )
    parser.add_argument(
        "--ink",
        nargs="+",
        default=[],
        choices=["blue", "green", "red", "black"],
        metavar="COLOUR",
        help="pen-ink strokes to draw: blue green red black (default none)",
    )
    parser.add_argument(
        "--border", action="store_true", help="draw a near-black scanner border (default off)"
    )
    parser.add_argument(
        "--prefix",
        default="",
        help="start every slide and case id with this (e.g. ext_ for a second, external cohort "
        "beside the first); same pixels as without it (default none)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="processes writing slides (default 1)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite even if OUTDIR already holds a complete cohort made with the same arguments",
    )


def run(args) -> int:
    from pipeline.errors import PipelineError
    from pipeline.synth import make_cohort

    try:
        make_cohort(
            args.outdir,
            args.slides,
            args.seed,
            size_scale=args.size_scale,
            tumor_fraction_range=tuple(args.tumor_fraction),
            two_slide_fraction=args.two_slide_fraction,
            censored_fraction=args.censored,
            mask_mpp=args.mask_mpp,
            workers=args.workers,
            overwrite=args.overwrite,
            decoy_fraction=args.decoys,
            ink=tuple(args.ink),
            border=args.border,
            prefix=args.prefix,
        )
    except ValueError as err:
        raise PipelineError(args.outdir, str(err), "Check the wsi-mil synth arguments.") from err
    return 0
