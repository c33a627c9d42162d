"""Write the viewer pages of one task: a deep-zoom page per slide and the sortable cohort index.

Each slide page shows the slide's pyramid (`wsi-mil viewer-tiles`) with switchable layers — tissue
(from the task's GeoJSON, `wsi-mil export-geojson`), the kept patch grid, and one heatmap per method
and score (out of fold for the training cohort: ``--heatmaps``; one model's for the external cohort:
``--external-heatmaps``) — an opacity slider, the scores of the patch under the mouse, the slide's
label, fold and predictions, and the top-k patches of each method, which pan the view to them.
Pages open from disk (``file://``) or behind any static web server. See :mod:`pipeline.viewer.pages`.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write the slide viewer pages (deep zoom + heatmap layers) and cohort index of one task"


def add_arguments(parser) -> None:
    parser.add_argument("--task", required=True, help="task name (page titles)")
    parser.add_argument("--heatmaps", type=Path, nargs="*", default=[], help="heatmap folders")
    parser.add_argument(
        "--external-heatmaps", type=Path, nargs="*", default=[], help="external heatmap folders"
    )
    parser.add_argument("--tiles-dir", type=Path, required=True, help="folder of tile stores")
    parser.add_argument("--geojson", type=Path, required=True, help="the task's GeoJSON folder")
    parser.add_argument("--pyramids", type=Path, required=True, help="folder of slide pyramids")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--config", type=Path, help="config YAML (default: built-in defaults)")


def run(args) -> int:
    from pipeline.config import section
    from pipeline.viewer.data import Method
    from pipeline.viewer.pages import PageJob, write_pages

    heatmaps = section(args.config, "heatmaps")
    methods = [Method(f, "cv") for f in args.heatmaps]
    methods += [Method(f, "external") for f in args.external_heatmaps]
    job = PageJob(
        task=args.task,
        methods=methods,
        tiles_dir=args.tiles_dir,
        geojson_dir=args.geojson,
        pyramids_dir=args.pyramids,
        outdir=args.output,
        normalise=heatmaps["normalise"],
        cmap=heatmaps["cmap"],
        k=heatmaps["k"],
    )
    write_pages(job)
    return 0
