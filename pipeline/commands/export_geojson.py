"""Write each slide as a GeoJSON FeatureCollection for QuPath: tissue, patches with scores, top-k.

Coordinates are level-0 pixels (QuPath: File › Import objects, or drag the file onto the slide).
Tissue contours (with holes) are re-derived from the slide with the segmentation settings its tile
store recorded; every kept patch is a ``tile`` object whose measurements are the scores of each
``--heatmaps`` folder (``{encoder}/{method}: {score}``); the top ``-k`` patches of each method are
annotations. Without ``--heatmaps`` the file has the tissue and the patch grid only. One
``{slide}.geojson`` per tile store in the output folder. See :mod:`pipeline.export.geojson`.
"""

from __future__ import annotations

from pathlib import Path

HELP = "write slides as QuPath GeoJSON (tissue contours, patches with scores, top-k patches)"


def add_arguments(parser) -> None:
    parser.add_argument("tiles", type=Path, nargs="+", help="tile stores ({slide}.zarr)")
    parser.add_argument(
        "--heatmaps",
        type=Path,
        nargs="*",
        default=[],
        help="heatmap folders (heatmaps/{task}/{encoder}/{method}) whose scores to attach",
    )
    parser.add_argument("-k", type=int, default=8, help="top patches per method (default 8)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")


def run(args) -> int:
    from pipeline.export.geojson import feature_collection, score_maps, write_geojson
    from pipeline.export.tissue import segment_again, tissue_polygons
    from pipeline.heatmaps.store import read_score_store
    from pipeline.layout import heatmap_files
    from pipeline.log import get_logger
    from pipeline.tilestore import read_tiles

    for path in args.tiles:
        tiles = read_tiles(path)
        slide = path.name.removesuffix(".zarr")
        log = get_logger("export-geojson", slide)
        if tiles.failed:
            log.warning("skipped: its tile store is marked failed (%s)", tiles.attrs.get("error"))
            continue
        stores = []
        for folder in args.heatmaps:
            store = heatmap_files(folder, slide)["store"]
            if store.exists():
                stores.append((f"{folder.parent.name}/{folder.name}", read_score_store(store)))
        polygons = tissue_polygons(segment_again(tiles))
        collection = feature_collection(tiles, polygons, score_maps(tiles, stores), args.k)
        out = write_geojson(args.output / f"{slide}.geojson", collection)
        log.info(
            "wrote %s: %d tissue pieces, %d patches, %d score maps",
            out,
            len(polygons),
            len(tiles.coords),
            len(stores),
        )
    return 0
