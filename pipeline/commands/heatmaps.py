"""Out-of-fold heatmaps of one task x encoder x method (the workflow's heatmaps stage).

Takes what `wsi-mil train` takes (features, tables, task type, method, config) plus the task's splits
file and the method's fold folders, and writes into OUTDIR, per slide, ``{slide}.zarr`` (patch scores),
``{slide}.png`` (heatmap) and ``{slide}_gallery.png/.csv`` (top and bottom patches); ``index.json`` last.
Each slide is scored by the fold model whose test part holds its case, never by one that trained or
validated on it. With --masks (the tumour masks' ``masks.json``, as `wsi-mil synth` writes it)
``localisation.csv`` gives the per-slide AUC of every score against the patches' tumour truth.
Drawing options default to the config's ``heatmaps`` section.
"""

from __future__ import annotations

from pathlib import Path

HELP = "out-of-fold score stores, heatmaps and galleries of every slide of a task for one method"


def add_arguments(parser) -> None:
    from pipeline.commands.train import add_data_arguments

    add_data_arguments(parser)
    parser.add_argument(
        "--splits", type=Path, required=True, help="splits CSV from `wsi-mil splits`"
    )
    parser.add_argument(
        "--folds", type=Path, nargs="+", required=True, help="the method's fold{k} folders"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    parser.add_argument("--masks", type=Path, help="tumour masks index (masks/masks.json)")
    parser.add_argument("-k", type=int, help="patches per gallery row (default: config, 8)")
    parser.add_argument("--max-side", type=int, help="long side of a heatmap (default: config)")
    parser.add_argument("--score", help="score drawn (default: config; attention)")


def run(args) -> int:
    from pipeline.commands.train import setup
    from pipeline.heatmaps.oof import HeatmapJob, fold_dirs_by_number, run_heatmaps
    from pipeline.heatmaps.render import RenderOptions
    from pipeline.mil.splits import read_splits
    from pipeline.mil.train import prepare_data
    from pipeline.settings import heatmap_settings

    _, task = setup(args)
    cfg = heatmap_settings(args.config)
    options = RenderOptions.from_settings(cfg, score=args.score, max_side=args.max_side)
    job = HeatmapJob(
        method=args.method,
        fold_dirs=fold_dirs_by_number(args.folds),
        outdir=args.output,
        features_dir=args.features,
        options=options,
        k=cfg.k if args.k is None else args.k,
        masks=args.masks,
        device=args.device,
        splits_path=str(args.splits),
    )
    splits = read_splits(args.splits)
    bags, bank, _ = prepare_data(task, args.features)
    index = run_heatmaps(task, bags, bank, splits, job)
    return 1 if not index["slides"] else 0
